//! The fleet at a glance: counts by presence, OS version, upgrade phase and
//! health, and the rollouts in progress.

use super::{bar_counts, is_htmx, live_fragment};
use crate::dashboard::error::DashResult;
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, stage_bar, when};
use crate::dashboard::AppState;
use crate::fleet::{FleetService, Overview, RolloutSummary, Tally};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

fn tally_table(id: &str, title: &str, rows: &[Tally], badges: bool) -> Markup {
    html! {
        div.panel {
            h2 { (title) }
            table id=(id) {
                tbody {
                    @for t in rows {
                        tr data-key=(t.value) {
                            td {
                                @if t.value.is_empty() { span.muted { "none reported" } }
                                @else if badges { (badge(&t.value)) }
                                @else { code { (t.value) } }
                            }
                            td.count { (t.count) }
                        }
                    }
                    @if rows.is_empty() { tr { td.muted colspan="2" { "no devices" } } }
                }
            }
        }
    }
}

pub fn rollout_rows(rollouts: &[RolloutSummary], now: harmony_protocol::time::UnixMillis) -> Markup {
    html! {
        @for r in rollouts {
            tr.rollout-row data-rollout-id=(r.id) {
                td { a href={ "/rollouts/" (r.id) } { (r.id) } }
                td { code { (r.target_version) } }
                td { (badge(&r.status)) }
                td { ((r.current_wave + 1).min(r.waves)) " / " (r.waves) }
                td.count { (r.counts.finished()) " / " (r.devices) }
                td { (stage_bar(&bar_counts(&r.counts), true)) }
                td { (when(r.created_at, now)) }
            }
        }
    }
}

pub fn rollout_head() -> Markup {
    html! {
        thead { tr { th { "Rollout" } th { "Version" } th { "Status" } th { "Wave" } th.count { "Done" } th { "Progress" } th { "Started" } } }
    }
}

fn region(ov: &Overview) -> Markup {
    let online = ov.by_presence.iter().find(|t| t.value == "online").map_or(0, |t| t.count);
    let unhealthy = ov.by_health.iter().find(|t| t.value == "unhealthy").map_or(0, |t| t.count);
    html! {
        div #overview hx-get="/" hx-trigger="sse:overview" hx-swap="outerHTML" hx-disinherit="*" {
            div.grid {
                div.panel { div.stat-label { "Devices" } div.stat #stat-devices { (ov.devices) } }
                div.panel { div.stat-label { "Online" } div.stat #stat-online { (online) } }
                div.panel { div.stat-label { "Unhealthy" } div.stat #stat-unhealthy { (unhealthy) } }
                div.panel { div.stat-label { "Active rollouts" } div.stat #stat-rollouts { (ov.active_rollouts.len()) } }
            }
            div.panel {
                h2 { "Active rollouts" }
                @if ov.active_rollouts.is_empty() {
                    p.muted #active-rollouts { "No rollout in progress." }
                } @else {
                    div.table-wrap {
                        table #active-rollouts { (rollout_head()) tbody { (rollout_rows(&ov.active_rollouts, ov.at)) } }
                    }
                }
            }
            div.grid {
                (tally_table("counts-presence", "Presence", &ov.by_presence, true))
                (tally_table("counts-health", "Health", &ov.by_health, true))
                (tally_table("counts-phase", "Upgrade phase", &ov.by_phase, true))
                (tally_table("counts-version", "OS version", &ov.by_os_version, false))
            }
        }
    }
}

pub async fn page<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let ov = app.fleet.overview().await?;
            Ok(region(&ov))
        })
        .await;
    }
    let ov = app.fleet.overview().await?;
    Ok(layout("Overview", Nav::Overview, &caller, html! { h1 { "Fleet overview" } (region(&ov)) }).into_response())
}
