//! One device: its last heartbeat, labels, its workloads (read-only), the
//! timeline of every upgrade transition with its reason, and (admins) ping
//! and reboot.

use super::devices::{health_name, status_badge};
use super::{actor, is_htmx, live_fragment, now, opt, wave_name};
use crate::dashboard::error::DashResult;
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, utc, when};
use crate::dashboard::AppState;
use crate::fleet::{device_id, DeviceDetail, FleetService};
use crate::provision::DeviceStatus;
use crate::workloads::view::retry_text;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::ResourceState;
use harmony_protocol::ReplyBody;
use maud::{html, Markup};

fn heartbeat(d: &DeviceDetail) -> Markup {
    let s = &d.summary;
    let now = now();
    html! {
        div.panel #device-heartbeat {
            h2 { "Last heartbeat" }
            @if let Some(e) = &d.heartbeat_error { div.flash.flash-error #heartbeat-error { "Latest heartbeat not believed: " (e) } }
            @match &d.heartbeat {
                None => p.muted { "No heartbeat yet." },
                Some(hb) => dl.facts {
                    dt { "Presence" } dd { (badge(s.presence.name())) }
                    dt { "Last seen" } dd { @if let Some(at) = s.last_seen { (when(at, now)) " (" (utc(at)) ")" } }
                    dt { "OS version" } dd { code { (opt(&hb.os_version)) } }
                    dt { "Agent" } dd { code { (hb.agent_version) } }
                    dt { "Compatible" } dd { code { (opt(&hb.compatible)) } }
                    dt { "Booted slot" } dd { (opt(&hb.booted_slot)) }
                    dt { "Boot id" } dd { code { (hb.boot_id) } }
                    dt { "Uptime" } dd { (hb.uptime_secs) " s" }
                    dt { "Health" } dd {
                        (badge(health_name(hb.health.status)))
                        @if !hb.health.failed_checks.is_empty() {
                            ul #failed-checks { @for c in &hb.health.failed_checks { li.failed-check { (c) } } }
                        }
                    }
                    dt { "Upgrade phase" } dd {
                        (badge(hb.upgrade.phase.name()))
                        @if let Some(r) = &hb.upgrade.rollout_id { " rollout " code { (r) } }
                        @if let Some(v) = &hb.upgrade.target_version { " → " code { (v) } }
                    }
                    @if let Some(m) = &s.boot_mismatch { dt { "Boot mismatch" } dd { (m) } }
                    dt { "Sequence" } dd { (hb.seq) }
                }
            }
        }
    }
}

fn enrollment(d: &DeviceDetail) -> Markup {
    let status = d.summary.status;
    html! {
        div.panel #device-enrollment {
            h2 { "Enrollment" }
            dl.facts {
                dt { "Status" } dd #device-status data-status=(status.map_or("unprovisioned", DeviceStatus::as_str)) { (status_badge(status)) }
                @if let Some(e) = &d.enrollment {
                    dt { "Token" } dd { code { (e.token) } }
                    dt { "Enrolled" } dd { (when(UnixMillis(e.at.saturating_mul(1000)), now())) }
                    dt { "Agent at enrollment" } dd { code { (e.agent_version) } }
                    @if let Some(v) = &e.os_version { dt { "OS at enrollment" } dd { code { (v) } } }
                }
            }
            @if let Some(held) = &d.held_labels {
                h3 { "Labels of its record (not used while it is not active)" }
                ul.labels data-source="held" {
                    @for (k, v) in held { li.label { (k) "=" (v) } }
                    @if held.is_empty() { li.muted { "none" } }
                }
            }
        }
    }
}

fn labels(d: &DeviceDetail) -> Markup {
    html! {
        div.panel #device-labels {
            h2 { "Labels" }
            h3 { "Provisioned (used by rollout selectors)" }
            ul.labels data-source="operator" {
                @for (k, v) in &d.summary.labels { li.label { (k) "=" (v) } }
                @if d.summary.labels.is_empty() { li.muted { "none" } }
            }
            @if let Some(hb) = &d.heartbeat {
                h3 { "Reported by the device" }
                ul.labels data-source="device" {
                    @for (k, v) in &hb.labels { li.label { (k) "=" (v) } }
                    @if hb.labels.is_empty() { li.muted { "none" } }
                }
            }
        }
    }
}

fn timeline(d: &DeviceDetail) -> Markup {
    let now = now();
    html! {
        div.panel {
            h2 { "Upgrade timeline" }
            @if let Some(e) = &d.job_error { div.flash.flash-error { "job record unreadable: " (e) } }
            @if d.timeline.is_empty() {
                p.muted #device-timeline { "Never part of a rollout." }
            } @else {
                ol.timeline #device-timeline {
                    @for t in d.timeline.iter().rev() {
                        li.transition data-state=(t.stage.map_or(t.state.as_str(), |s| s.name())) {
                            div {
                                (badge(&t.state)) " "
                                a href={ "/rollouts/" (t.rollout_id) } { (t.rollout_id) }
                                @if let Some(v) = &t.target_version { " → " code { (v) } }
                                " · " (wave_name(t.wave))
                            }
                            @if !t.note.is_empty() { div { (t.note) } }
                            @if let Some(r) = &t.reason { div.reason { strong { "Reason: " } (r) } }
                            div.when { (when(t.at, now)) " · " (utc(t.at)) }
                        }
                    }
                }
            }
        }
    }
}

/// What the operator asked for beside what the device reports; every
/// string of the status is the device's and is escaped like the rest.
fn workloads(d: &DeviceDetail) -> Markup {
    let now = now();
    let generation = |g: Option<u64>| g.map_or_else(|| "—".to_string(), |g| g.to_string());
    html! {
        div.panel #device-workloads {
            h2 { "Workloads" }
            @if let Some(e) = &d.workloads_error { div.flash.flash-error { "Workloads unreadable: " (e) } }
            @match &d.workloads {
                None => p.muted { "No workloads." },
                Some(w) => {
                    dl.facts {
                        dt { "Desired generation" } dd #workloads-desired { (generation(w.desired.as_ref().map(|x| x.generation))) }
                        dt { "Observed generation" } dd #workloads-observed { (generation(w.status.as_ref().and_then(|s| s.observed_generation))) }
                        dt { "State" } dd #workloads-convergence data-convergence=(w.convergence.name()) { (badge(w.convergence.name())) }
                        @if let Some(s) = &w.status {
                            dt { "Boot" } dd { code { (s.boot_id) } @if w.current_boot == Some(false) { " (an earlier boot)" } }
                            dt { "Reported" } dd { (when(s.updated_at, now)) }
                        }
                        @if let Some(x) = &w.desired { dt { "Gates OS upgrades" } dd { (if x.gate_upgrades { "yes" } else { "no" }) } }
                    }
                    @if let Some(r) = w.refused() { div.flash.flash-error #workloads-refused { "Refused: " (r) } }
                    @for e in w.status_error.iter().chain(&w.desired_error) { div.flash.flash-error { (e) } }
                    @let rows = w.rows();
                    @if !rows.is_empty() {
                        div.table-wrap {
                            table #workload-resources {
                                thead { tr { th { "Resource" } th { "Kind" } th { "State" } th { "Since" } th { "Detail" } } }
                                tbody {
                                    @for r in &rows {
                                        @let state = r.state.as_ref().map_or("unreported", ResourceState::name);
                                        tr.resource-row data-resource-id=(r.id) data-state=(state) {
                                            td { code { (r.id) } }
                                            td { (r.kind.as_deref().unwrap_or("—")) }
                                            td { (badge(state)) }
                                            td { @if let Some(since) = resource_since(r.state.as_ref()) { (when(since, now)) } }
                                            td { (resource_detail(r.state.as_ref(), now)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn resource_since(state: Option<&ResourceState>) -> Option<UnixMillis> {
    match state? {
        ResourceState::Pending => None,
        ResourceState::Reconciling { since }
        | ResourceState::Ready { since, .. }
        | ResourceState::Failed { since, .. } => Some(*since),
    }
}

fn resource_detail(state: Option<&ResourceState>, now: UnixMillis) -> Markup {
    html! {
        @match state {
            Some(ResourceState::Ready { details, .. }) => (details),
            Some(ResourceState::Failed { error, attempts, retry_after, .. }) => {
                (error) " (attempt " (attempts) ", " (retry_text(*retry_after, now)) ")"
            }
            _ => "",
        }
    }
}

fn region(d: &DeviceDetail) -> Markup {
    let id = d.summary.device_id.as_str();
    html! {
        div #device-detail data-device-id=(id) hx-get={ "/devices/" (id) } hx-trigger="sse:devices" hx-swap="outerHTML" hx-disinherit="*" {
            div.grid { (heartbeat(d)) (labels(d)) }
            (enrollment(d))
            (workloads(d))
            (timeline(d))
        }
    }
}

fn actions(id: &str, status: Option<DeviceStatus>, caller: &Caller) -> Markup {
    html! {
        @if caller.is_admin() {
            div.row {
                button #ping-button hx-post={ "/devices/" (id) "/ping" } hx-target="#device-action-result" { "Ping" }
                button #reboot-button.danger hx-post={ "/devices/" (id) "/reboot" } hx-target="#device-action-result"
                    hx-confirm="Reboot this device now?" { "Reboot" }
                @if status == Some(DeviceStatus::Pending) {
                    button #accept-button hx-post={ "/devices/" (id) "/accept" } hx-target="#device-action-result" { "Accept" }
                    button #reject-button.danger hx-post={ "/devices/" (id) "/reject" } hx-target="#device-action-result"
                        hx-confirm="Reject this device? Its key is never admitted again." { "Reject" }
                }
                @if matches!(status, Some(DeviceStatus::Active | DeviceStatus::Pending)) {
                    button #revoke-button.danger hx-post={ "/devices/" (id) "/revoke" } hx-target="#device-action-result"
                        hx-confirm="Revoke this device? It is disconnected now and its key is never admitted again." { "Revoke" }
                }
                span.spinner {}
            }
        }
        div #device-action-result {}
    }
}

pub async fn page<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> DashResult<Response> {
    let id = device_id(&id)?;
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let detail = app.fleet.device(&id).await?;
            Ok(region(&detail))
        })
        .await;
    }
    let detail = app.fleet.device(&id).await?;
    let body = html! {
        div.row {
            h1 { "Device " code { (id) } }
            div.spacer {}
            (actions(id.as_str(), detail.summary.status, &caller))
        }
        (region(&detail))
    };
    Ok(layout("Device", Nav::Devices, &caller, body).into_response())
}

pub async fn ping<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    let id = device_id(&id)?;
    let report = app.fleet.ping(&actor(&caller), &id).await?;
    let detail = match &report.reply {
        ReplyBody::Pong { agent_version, uptime_secs, booted_slot, .. } => {
            format!("agent {agent_version}, up {uptime_secs} s, slot {}", booted_slot.as_deref().unwrap_or("?"))
        }
        other => format!("{other:?}"),
    };
    Ok(html! {
        div.flash.flash-ok #ping-result { "Pong from " code { (id) } " in " (format!("{:.1}", report.rtt_ms)) " ms — " (detail) }
    })
}

pub async fn reboot<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    let id = device_id(&id)?;
    app.fleet.reboot(&actor(&caller), &id).await?;
    Ok(html! { div.flash.flash-ok #reboot-result { "Reboot scheduled on " code { (id) } "." } })
}
