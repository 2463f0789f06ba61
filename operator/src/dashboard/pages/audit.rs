//! The audit log: every action from the dashboard or the CLI, newest first.

use super::{is_htmx, live_fragment, now};
use crate::dashboard::error::DashResult;
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, utc, when};
use crate::dashboard::AppState;
use crate::fleet::{AuditAction, AuditPage, AuditQuery, AuditResult, FleetService, Via};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Paging {
    offset: usize,
}

fn action_name(a: AuditAction) -> &'static str {
    match a {
        AuditAction::RolloutStart => "rollout start",
        AuditAction::RolloutPause => "rollout pause",
        AuditAction::RolloutResume => "rollout resume",
        AuditAction::RolloutAbort => "rollout abort",
        AuditAction::BundlePush => "bundle push",
        AuditAction::BundleRemove => "bundle remove",
        AuditAction::DevicePing => "device ping",
        AuditAction::DeviceReboot => "device reboot",
        AuditAction::DeviceAccept => "device accept",
        AuditAction::DeviceReject => "device reject",
        AuditAction::DeviceRevoke => "device revoke",
        AuditAction::TokenCreate => "token create",
        AuditAction::TokenRevoke => "token revoke",
        AuditAction::WorkloadApply => "workloads apply",
        AuditAction::WorkloadRemove => "workloads rm",
        AuditAction::Other => "other",
    }
}

fn region(p: &AuditPage) -> Markup {
    let now = now();
    let url = format!("/audit?offset={}", p.offset);
    let last = p.offset + p.entries.len();
    html! {
        div #audit-region hx-get=(url) hx-trigger="sse:audit" hx-swap="outerHTML" hx-disinherit="*" {
            div.table-wrap {
                table #audit-table {
                    thead { tr { th { "When" } th { "Who" } th { "Via" } th { "Action" } th { "Target" } th { "Result" } } }
                    tbody {
                        @for e in &p.entries {
                            tr.audit-row data-seq=(e.seq) {
                                td title=(utc(e.at)) { (when(e.at, now)) }
                                td.actor { (e.actor.name) }
                                td { @match e.actor.via { Via::Cli => "CLI", Via::Dashboard => "dashboard" } }
                                td.action { (action_name(e.action)) }
                                td.target { code { (e.target) } }
                                td.result {
                                    @match &e.result {
                                        AuditResult::Ok { detail } => { (badge("ok")) " " (detail) }
                                        AuditResult::Failed { error } => { (badge("error")) " " (error) }
                                    }
                                }
                            }
                        }
                        @if p.entries.is_empty() { tr { td.muted colspan="6" { "Nothing recorded yet." } } }
                    }
                }
            }
            div.pager {
                @if p.offset > 0 {
                    @let prev = format!("/audit?offset={}", p.offset.saturating_sub(p.limit));
                    a.page-prev href=(prev) hx-get=(prev) hx-target="#audit-region" hx-swap="outerHTML" hx-push-url="true" { "← Newer" }
                }
                @if last < p.total {
                    @let next = format!("/audit?offset={last}");
                    a.page-next href=(next) hx-get=(next) hx-target="#audit-region" hx-swap="outerHTML" hx-push-url="true" { "Older →" }
                }
            }
        }
    }
}

pub async fn page<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    Query(paging): Query<Paging>,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let log = app.fleet.audit(&AuditQuery { offset: paging.offset, limit: 0 }).await?;
            Ok(region(&log))
        })
        .await;
    }
    let log = app.fleet.audit(&AuditQuery { offset: paging.offset, limit: 0 }).await?;
    let body = html! { h1 { "Audit log" } div.panel { (region(&log)) } };
    Ok(layout("Audit log", Nav::Audit, &caller, body).into_response())
}
