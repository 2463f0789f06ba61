//! The device list: filter by label, presence, version, phase and health;
//! search; sort; server-side pages.

use super::{is_htmx, live_fragment, opt};
use crate::dashboard::error::{DashError, DashResult};
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, when};
use crate::dashboard::AppState;
use crate::fleet::{DevicePage, DeviceQuery, DeviceSort, FleetService, Presence};
use crate::provision::DeviceStatus;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use harmony_protocol::HealthStatus;
use maud::{html, Markup};
use serde::{Deserialize, Serialize};

/// The filter form as the query string carries it (empty fields: no filter).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub q: String,
    pub label: String,
    pub presence: String,
    pub version: String,
    pub phase: String,
    pub health: String,
    pub status: String,
    pub sort: String,
    pub desc: String,
    pub offset: usize,
}

const PRESENCES: [&str; 4] = ["online", "stale", "offline", "unseen"];
const STATUSES: [&str; 4] = ["active", "pending", "rejected", "revoked"];
const HEALTHS: [&str; 3] = ["healthy", "unhealthy", "unknown"];
const PHASES: [&str; 12] = [
    "idle",
    "offered",
    "downloading",
    "verifying",
    "installing",
    "installed",
    "rebooting",
    "awaiting_commit",
    "committed",
    "refused",
    "failed",
    "rolled_back",
];
const SORTS: [(&str, &str); 4] = [("id", "Id"), ("last_seen", "Last seen"), ("version", "Version"), ("phase", "Phase")];

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl Filter {
    pub fn query(&self) -> DashResult<DeviceQuery> {
        let presence = match self.presence.as_str() {
            "" => vec![],
            "online" => vec![Presence::Online],
            "stale" => vec![Presence::Stale],
            "offline" => vec![Presence::Offline],
            "unseen" => vec![Presence::Unseen],
            other => return Err(DashError::BadRequest(format!("presence {other:?}"))),
        };
        let health = match self.health.as_str() {
            "" => None,
            "healthy" => Some(HealthStatus::Healthy),
            "unhealthy" => Some(HealthStatus::Unhealthy),
            "unknown" => Some(HealthStatus::Unknown),
            other => return Err(DashError::BadRequest(format!("health {other:?}"))),
        };
        let status = match self.status.as_str() {
            "" => None,
            "active" => Some(DeviceStatus::Active),
            "pending" => Some(DeviceStatus::Pending),
            "rejected" => Some(DeviceStatus::Rejected),
            "revoked" => Some(DeviceStatus::Revoked),
            other => return Err(DashError::BadRequest(format!("status {other:?}"))),
        };
        let sort = match self.sort.as_str() {
            "" | "id" => DeviceSort::Id,
            "last_seen" => DeviceSort::LastSeen,
            "version" => DeviceSort::Version,
            "phase" => DeviceSort::Phase,
            other => return Err(DashError::BadRequest(format!("sort {other:?}"))),
        };
        Ok(DeviceQuery {
            selector: some(&self.label),
            presence,
            os_version: some(&self.version),
            phase: some(&self.phase),
            health,
            status,
            search: some(&self.q),
            sort,
            descending: !self.desc.is_empty(),
            offset: self.offset,
            limit: 0,
        })
    }

    fn url(&self, offset: usize) -> String {
        let mut f = self.clone();
        f.offset = offset;
        format!("/devices?{}", serde_urlencoded::to_string(&f).unwrap_or_default())
    }
}

fn select(name: &str, label: &str, current: &str, options: &[(&str, &str)]) -> Markup {
    html! {
        label {
            (label)
            select name=(name) {
                @for (value, text) in options {
                    option value=(value) selected[*value == current] { (text) }
                }
            }
        }
    }
}

fn filter_form(f: &Filter) -> Markup {
    let any = |values: &[&'static str]| -> Vec<(&'static str, &'static str)> {
        std::iter::once(("", "any")).chain(values.iter().map(|v| (*v, *v))).collect()
    };
    html! {
        form #device-filter.filters method="get" action="/devices"
            hx-get="/devices" hx-target="#devices-region" hx-swap="outerHTML" hx-push-url="true"
            hx-trigger="input delay:300ms, change, submit" {
            label { "Search id" input type="search" name="q" value=(f.q) placeholder="substring"; }
            label { "Label" input name="label" value=(f.label) placeholder="site=office"; }
            (select("presence", "Presence", &f.presence, &any(&PRESENCES)))
            label { "OS version" input name="version" value=(f.version) placeholder="exact"; }
            (select("phase", "Phase", &f.phase, &any(&PHASES)))
            (select("health", "Health", &f.health, &any(&HEALTHS)))
            (select("status", "Status", &f.status, &any(&STATUSES)))
            (select("sort", "Sort by", &f.sort, &SORTS))
            label { "Order" select name="desc" { option value="" selected[f.desc.is_empty()] { "ascending" } option value="1" selected[!f.desc.is_empty()] { "descending" } } }
            button type="submit" { "Apply" }
        }
    }
}

fn region(f: &Filter, p: &DevicePage) -> Markup {
    let first = if p.total == 0 { 0 } else { p.offset + 1 };
    let last = p.offset + p.devices.len();
    html! {
        div #devices-region hx-get=(f.url(p.offset)) hx-trigger="sse:devices" hx-swap="outerHTML" hx-disinherit="*" {
            p.muted {
                span #devices-total data-total=(p.total) { (p.total) } " matching of " (p.fleet_size) " devices"
                @if p.total > 0 { " · showing " (first) "–" (last) }
            }
            div.table-wrap {
                table #devices-table {
                    thead { tr { th { "Device" } th { "Status" } th { "Presence" } th { "Last seen" } th { "OS version" } th { "Slot" } th { "Health" } th { "Phase" } th { "Rollout" } th { "Labels" } } }
                    tbody {
                        @for d in &p.devices {
                            tr.device-row data-device-id=(d.device_id) {
                                td { a href={ "/devices/" (d.device_id) } { code { (d.device_id) } } }
                                td.status { (status_badge(d.status)) }
                                td { (badge(d.presence.name())) }
                                td { @if let Some(at) = d.last_seen { (when(at, p.at)) } @else { span.muted { "never" } } }
                                td { code { (opt(&d.os_version)) } }
                                td { (opt(&d.booted_slot)) }
                                td { @if let Some(h) = d.health { (badge(health_name(h))) } }
                                td { @if let Some(ph) = &d.phase { (badge(ph)) } }
                                td {
                                    @if let Some(j) = &d.job {
                                        a href={ "/rollouts/" (j.rollout_id) } { (j.rollout_id) } " " (badge(j.stage.name()))
                                    }
                                }
                                td { ul.labels { @for (k, v) in &d.labels { li.label { (k) "=" (v) } } } }
                            }
                        }
                        @if p.devices.is_empty() { tr { td.muted colspan="10" { "No device matches." } } }
                    }
                }
            }
            div.pager {
                @if p.offset > 0 {
                    @let prev = f.url(p.offset.saturating_sub(p.limit));
                    a.page-prev href=(prev) hx-get=(prev) hx-target="#devices-region" hx-swap="outerHTML" hx-push-url="true" { "← Previous" }
                }
                @if last < p.total {
                    @let next = f.url(last);
                    a.page-next href=(next) hx-get=(next) hx-target="#devices-region" hx-swap="outerHTML" hx-push-url="true" { "Next →" }
                }
            }
        }
    }
}

/// A device's enrollment status; `unprovisioned` when the operator has no
/// record of it (only heard from).
pub fn status_badge(s: Option<DeviceStatus>) -> Markup {
    badge(s.map_or("unprovisioned", DeviceStatus::as_str))
}

pub fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Unknown => "unknown",
    }
}

pub async fn page<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    Query(filter): Query<Filter>,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let devices = app.fleet.devices(&filter.query()?).await?;
            Ok(region(&filter, &devices))
        })
        .await;
    }
    let devices = app.fleet.devices(&filter.query()?).await?;
    let body = html! {
        h1 { "Devices" }
        div.panel { (filter_form(&filter)) (region(&filter, &devices)) }
    };
    Ok(layout("Devices", Nav::Devices, &caller, body).into_response())
}
