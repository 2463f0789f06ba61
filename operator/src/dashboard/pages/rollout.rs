//! One rollout: status and halt reason, a progress bar per wave with a
//! segment per stage, the status history, the jobs, and (admins) pause,
//! resume and abort.

use super::{actor, bar_counts, is_htmx, live_fragment, now, wave_name, BAR_ORDER};
use crate::dashboard::error::DashResult;
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, bytes, legend, stage_bar, utc, when};
use crate::dashboard::AppState;
use crate::fleet::{Control, FleetService, RolloutDetail, Stage, WaveState};
use crate::model::{HaltThreshold, JobState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

/// Jobs listed on the page; a bigger rollout shows the first ones and says so.
const JOBS_SHOWN: usize = 500;

fn controls(d: &RolloutDetail, caller: &Caller) -> Markup {
    let status = d.summary.status.as_str();
    let id = &d.summary.id;
    html! {
        @if caller.is_admin() && !d.rollout.status.is_final() {
            div.row #rollout-controls {
                @if status == "running" {
                    button #pause-button hx-post={ "/rollouts/" (id) "/pause" } hx-target="#flash" { "Pause" }
                }
                @if status == "paused" || status == "halted" {
                    button #resume-button.primary hx-post={ "/rollouts/" (id) "/resume" } hx-target="#flash"
                        hx-confirm=(if status == "halted" { "Resume a halted rollout? Its failures so far are accepted." } else { "Resume this rollout?" }) { "Resume" }
                }
                button #abort-button.danger hx-post={ "/rollouts/" (id) "/abort" } hx-target="#flash"
                    hx-confirm="Abort this rollout? Devices not offered yet are skipped." { "Abort" }
            }
        }
    }
}

fn job_reason(state: &JobState) -> Option<&str> {
    match state {
        JobState::Failed { reason } | JobState::RolledBack { reason } => Some(reason),
        JobState::TimedOut { waiting_for } => Some(waiting_for),
        _ => None,
    }
}

fn waves(d: &RolloutDetail) -> Markup {
    let shown: Vec<&str> = BAR_ORDER.iter().map(|s| s.name()).chain(std::iter::once("superseded")).collect();
    html! {
        div.panel #rollout-waves {
            h2 { "Progress" }
            @for w in &d.waves {
                @let state = match w.state { WaveState::Done => "done", WaveState::Current => "current", WaveState::Waiting => "waiting" };
                div.wave data-wave=(w.index) data-state=(state) {
                    div.wave-head {
                        strong { @if w.index == 0 { "Canary" } @else { "Wave " (w.index) } }
                        span.muted { (w.devices) " devices" }
                        span.badge data-status=(state) { (state) }
                        span.spacer {}
                        span.muted {
                            (w.counts.committed) " committed"
                            @let bad = w.counts.failed + w.counts.rolled_back + w.counts.timed_out;
                            @if bad > 0 { " · " (bad) " failed" }
                        }
                    }
                    (stage_bar(&bar_counts(&w.counts), false))
                }
            }
            (legend(&shown))
        }
    }
}

fn facts(d: &RolloutDetail) -> Markup {
    let r = &d.rollout;
    let now = now();
    html! {
        div.panel {
            h2 { "Rollout" }
            dl.facts {
                dt { "Bundle" } dd { code { (r.bundle.id) } " · version " code { (r.bundle.version) } " · " (bytes(r.bundle.size)) }
                dt { "Devices" } dd { (d.summary.devices) " in " (d.summary.waves) " waves" }
                dt { "Started" } dd { (when(r.created_at, now)) " (" (utc(r.created_at)) ")" }
                dt { "Max in flight" } dd { (r.policy.max_in_flight) }
                dt { "Halts after" } dd {
                    @match r.policy.halt {
                        HaltThreshold::Count(n) => { (n) " failed device(s) in a wave" }
                        HaltThreshold::Percent(p) => { (p) " % of a wave failed" }
                    }
                }
                dt { "Device timeout" } dd { (r.policy.device_timeout_ms / 1000) " s" }
                dt { "Downgrade" } dd { @if r.policy.allow_downgrade { "allowed" } @else { "refused" } }
            }
        }
    }
}

fn history(d: &RolloutDetail) -> Markup {
    let now = now();
    html! {
        div.panel {
            h2 { "Status history" }
            ol.timeline #rollout-history {
                @for t in d.rollout.history.iter().rev() {
                    li.transition data-state=(t.to) {
                        div { (badge(&t.to)) @if !t.note.is_empty() { " " (t.note) } }
                        div.when { (when(t.at, now)) " · " (utc(t.at)) }
                    }
                }
            }
        }
    }
}

fn jobs(d: &RolloutDetail) -> Markup {
    let now = now();
    html! {
        div.panel {
            h2 { "Devices" }
            div.table-wrap {
                table #rollout-jobs {
                    thead { tr { th { "Device" } th { "Wave" } th { "Stage" } th { "Reason" } th { "Last change" } } }
                    tbody {
                        @for j in d.jobs.iter().take(JOBS_SHOWN) {
                            @let stage = Stage::of(&j.state);
                            tr.job-row data-device-id=(j.device) data-state=(stage.name()) {
                                td { a href={ "/devices/" (j.device) } { code { (j.device) } } }
                                td { (wave_name(j.wave)) }
                                td { (badge(stage.name())) }
                                td { @if let Some(r) = job_reason(&j.state) { (r) } }
                                td { @if let Some(t) = j.history.last() { (when(t.at, now)) } }
                            }
                        }
                    }
                }
            }
            @if d.jobs.len() > JOBS_SHOWN { p.muted { "First " (JOBS_SHOWN) " of " (d.jobs.len()) " devices shown." } }
        }
    }
}

fn region(d: &RolloutDetail, caller: &Caller) -> Markup {
    let s = &d.summary;
    html! {
        div #rollout-detail data-rollout-id=(s.id) hx-get={ "/rollouts/" (s.id) } hx-trigger="sse:rollouts" hx-swap="outerHTML" hx-disinherit="*" {
            div.row {
                h1 { "Rollout " code { (s.id) } }
                span #rollout-status.badge data-status=(s.status) { (s.status) }
                div.spacer {}
                (controls(d, caller))
            }
            @if let Some(reason) = &s.halt_reason { div #halt-reason role="alert" { strong { "Halted: " } (reason) } }
            @if !d.corrupt.is_empty() { div.flash.flash-error { (d.corrupt.len()) " unreadable record(s) skipped." } }
            (waves(d))
            div.grid { (facts(d)) (history(d)) }
            (jobs(d))
        }
    }
}

pub async fn page<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let detail = app.fleet.rollout(&id).await?;
            Ok(region(&detail, &caller))
        })
        .await;
    }
    let detail = app.fleet.rollout(&id).await?;
    Ok(layout("Rollout", Nav::Rollouts, &caller, region(&detail, &caller)).into_response())
}

pub async fn control<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path((id, control)): Path<(String, String)>,
) -> DashResult<Markup> {
    let control: Control = control.parse()?;
    app.fleet.control_rollout(&actor(&caller), &id, control).await?;
    Ok(html! {
        div.flash.flash-ok #control-result data-control=(control.name()) {
            (control.name()) " requested for " code { (id) } "; the leading operator applies it."
        }
    })
}
