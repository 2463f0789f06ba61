//! Enrollment administration: devices waiting for approval (admins accept
//! or reject them), verdicts on one device (accept, reject, revoke), and
//! enrollment tokens (list; admins create and revoke). Everything goes
//! through the [`FleetService`], which audits it under the user's name.
//!
//! A created token's text is in the answer to its creator's POST only: no
//! live region, fragment cache or log ever holds it.

use super::devices::status_badge;
use super::{actor, is_htmx, live_fragment, now};
use crate::dashboard::error::{DashError, DashResult};
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::{badge, csrf_field, utc, when};
use crate::dashboard::AppState;
use crate::enroll::token::TokenRecord;
use crate::fleet::{device_id, FleetService, TokenSpec, TokenState, Verdict};
use crate::provision::DeviceUser;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use harmony_protocol::time::UnixMillis;
use maud::{html, Markup};
use serde::Deserialize;

fn secs(at: u64) -> UnixMillis {
    UnixMillis(at.saturating_mul(1000))
}

fn labels(l: &std::collections::BTreeMap<String, String>) -> Markup {
    html! { ul.labels { @for (k, v) in l { li.label { (k) "=" (v) } } } }
}

/// The buttons that judge a pending device (admins only).
fn verdict_buttons(id: &str) -> Markup {
    html! {
        button.accept-device hx-post={ "/devices/" (id) "/accept" } hx-target="#flash" { "Accept" }
        " "
        button.danger.reject-device hx-post={ "/devices/" (id) "/reject" } hx-target="#flash"
            hx-confirm="Reject this device? Its key is never admitted again." { "Reject" }
    }
}

fn pending_region(pending: &[DeviceUser], caller: &Caller) -> Markup {
    let now = now();
    html! {
        div #pending-region hx-get="/pending" hx-trigger="sse:devices" hx-swap="outerHTML" hx-disinherit="*" {
            p.muted { span #pending-total data-total=(pending.len()) { (pending.len()) } " waiting for a verdict" }
            div.table-wrap {
                table #pending-table {
                    thead { tr { th { "Device" } th { "Token" } th { "Labels" } th { "OS version" } th { "Agent" } th { "Asked" } @if caller.is_admin() { th {} } } }
                    tbody {
                        @for u in pending {
                            @let e = u.enrollment.as_ref();
                            tr.pending-row data-device-id=(u.device) {
                                td { a href={ "/devices/" (u.device) } { code { (u.device) } } }
                                td.token { @if let Some(e) = e { code { (e.token) } } }
                                td { (labels(&u.labels)) }
                                td { @if let Some(v) = e.and_then(|e| e.os_version.as_ref()) { code { (v) } } @else { "—" } }
                                td { @if let Some(e) = e { code { (e.agent_version) } } }
                                td.asked { @if let Some(e) = e { (when(secs(e.at), now)) } }
                                @if caller.is_admin() { td.actions { (verdict_buttons(u.device.as_str())) } }
                            }
                        }
                        @if pending.is_empty() { tr { td.muted colspan="7" { "No device is waiting." } } }
                    }
                }
            }
        }
    }
}

/// Devices enrolled with an approval token, waiting.
pub async fn pending<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            Ok(pending_region(&app.fleet.pending_devices().await?, &caller))
        })
        .await;
    }
    let pending = app.fleet.pending_devices().await?;
    let body = html! {
        h1 { "Pending devices" }
        p.muted { "Devices enrolled with a token that requires approval. Until accepted they can only ask again." }
        div.panel { (pending_region(&pending, &caller)) }
    };
    Ok(layout("Pending devices", Nav::Pending, &caller, body).into_response())
}

pub async fn accept<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    judge(&app, &caller, &id, Verdict::Accept).await
}

pub async fn reject<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    judge(&app, &caller, &id, Verdict::Reject).await
}

pub async fn revoke<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    judge(&app, &caller, &id, Verdict::Revoke).await
}

/// `POST /devices/{id}/{accept|reject|revoke}`.
async fn judge<S: FleetService>(app: &AppState<S>, caller: &Caller, id: &str, verdict: Verdict) -> DashResult<Markup> {
    let id = device_id(id)?;
    let j = app.fleet.judge_device(&actor(caller), &id, verdict).await?;
    Ok(html! {
        div.flash.flash-ok #verdict-result data-verdict=(verdict.name()) data-status=(j.status.as_str()) {
            code { (j.device) } " is now " (status_badge(Some(j.status)))
            @if verdict.disconnects() { " (" (j.disconnected) " connection(s) closed)" }
        }
    })
}

fn tokens_region(tokens: &[TokenRecord], caller: &Caller) -> Markup {
    let now_ms = now();
    let now_s = now_ms.0 / 1000;
    html! {
        div #tokens-region hx-get="/tokens" hx-trigger="sse:tokens" hx-swap="outerHTML" hx-disinherit="*" {
            div.table-wrap {
                table #tokens-table {
                    thead { tr { th { "Token" } th { "State" } th.count { "Uses" } th { "Approval" } th { "Labels" } th { "Expires" } th { "Created" } th { "Devices" } @if caller.is_admin() { th {} } } }
                    tbody {
                        @for t in tokens {
                            @let state = TokenState::of(t, now_s);
                            tr.token-row data-token-id=(t.id) data-state=(state.name()) {
                                td { code { (t.id) } }
                                td { (badge(state.name())) }
                                td.count { (t.uses) "/" (t.max_uses) }
                                td { @if t.require_approval { "required" } @else { "no" } }
                                td { (labels(&t.labels)) }
                                td { time datetime=(t.expires_at) { (utc(secs(t.expires_at))) } }
                                td { (when(secs(t.created_at), now_ms)) " by " (t.created_by) }
                                td { @for d in &t.devices { a href={ "/devices/" (d) } { code { (d) } } " " } }
                                @if caller.is_admin() {
                                    td { @if t.revoked_at.is_none() {
                                        button.danger.revoke-token hx-post={ "/tokens/" (t.id) "/revoke" } hx-target="#flash"
                                            hx-confirm="Revoke this token? No device can enroll with it any more." { "Revoke" }
                                    } }
                                }
                            }
                        }
                        @if tokens.is_empty() { tr { td.muted colspan="9" { "No enrollment tokens yet." } } }
                    }
                }
            }
        }
    }
}

fn token_form(caller: &Caller) -> Markup {
    html! {
        div.panel {
            h2 { "Create a token" }
            form #token-form.filters hx-post="/tokens" hx-target="#token-result" {
                (csrf_field(caller))
                label { "Labels" input name="labels" placeholder="site=lab,room=2"; }
                label { "Max uses" input name="max_uses" type="number" min="1" value="1" required; }
                label { "Expires in" input name="expires" value="7d" placeholder="30m, 12h, 7d" required; }
                label { input type="checkbox" name="require_approval" value="1"; " Require approval" }
                button.primary #token-create-button type="submit" { "Create" }
            }
            div #token-result {}
        }
    }
}

pub async fn tokens<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async { Ok(tokens_region(&app.fleet.tokens().await?, &caller)) })
            .await;
    }
    let tokens = app.fleet.tokens().await?;
    let body = html! {
        h1 { "Enrollment tokens" }
        p.muted { "A token lets devices ask to enroll. Its text is shown once, when it is created; only its id is kept." }
        div.panel { (tokens_region(&tokens, &caller)) }
        @if caller.is_admin() { (token_form(&caller)) }
    };
    Ok(layout("Tokens", Nav::Tokens, &caller, body).into_response())
}

/// The token form as posted.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    labels: String,
    max_uses: String,
    expires: String,
    #[serde(default)]
    require_approval: Option<String>,
}

pub async fn create_token<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Form(f): Form<TokenForm>,
) -> DashResult<Markup> {
    let max_uses: u32 =
        f.max_uses.trim().parse().map_err(|_| DashError::BadRequest(format!("max uses {:?}", f.max_uses)))?;
    let spec = TokenSpec {
        labels: vec![f.labels],
        max_uses,
        expires: f.expires.trim().to_string(),
        require_approval: f.require_approval.is_some_and(|v| !v.is_empty()),
    };
    let created = app.fleet.create_token(&actor(&caller), &spec).await?;
    let r = &created.record;
    Ok(html! {
        div.flash.flash-ok #token-created data-token-id=(r.id) {
            p { "Token " code { (r.id) } " for " (r.max_uses) " device(s), expires " (utc(secs(r.expires_at)))
                @if r.require_approval { "; each device waits for approval" } "." }
            p { strong { "Copy it now: it is shown only this once." }
                " Write it onto a card with " code { "harmony-operator enroll prepare --token …" } "." }
            input #token-text.token-text type="text" readonly value=(created.token) aria-label="enrollment token";
        }
    })
}

pub async fn revoke_token<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    let t = app.fleet.revoke_token(&actor(&caller), &id).await?;
    Ok(html! {
        div.flash.flash-ok #token-revoked data-token-id=(t.id) {
            "Token " code { (t.id) } " revoked; " (t.uses) " device(s) enrolled with it keep their identity."
        }
    })
}
