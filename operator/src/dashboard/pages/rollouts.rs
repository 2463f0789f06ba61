//! The rollout list, and (admins) starting a rollout.

use super::overview::{rollout_head, rollout_rows};
use super::{actor, is_htmx, live_fragment, now};
use crate::dashboard::error::{DashError, DashResult};
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::widgets::csrf_field;
use crate::dashboard::AppState;
use crate::fleet::{BundleView, FleetService, RolloutSummary, StartArgs, Target};
use crate::model::HaltThreshold;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

fn region(rollouts: &[RolloutSummary]) -> Markup {
    html! {
        div #rollouts-region hx-get="/rollouts" hx-trigger="sse:rollouts" hx-swap="outerHTML" hx-disinherit="*" {
            @if rollouts.is_empty() {
                p.muted #rollouts-table { "No rollouts yet." }
            } @else {
                div.table-wrap { table #rollouts-table { (rollout_head()) tbody { (rollout_rows(rollouts, now())) } } }
            }
        }
    }
}

fn start_form(bundles: &[BundleView], caller: &Caller) -> Markup {
    html! {
        div.panel {
            h2 { "Start a rollout" }
            @if bundles.is_empty() {
                p.muted { "Upload a bundle first." }
            } @else {
                form #start-form.filters hx-post="/rollouts" hx-target="#flash" hx-confirm="Start this rollout?" {
                    (csrf_field(caller))
                    label { "Bundle" select name="bundle" { @for b in bundles { option value=(b.record.id) { (b.record.id) " (" (b.record.version) ")" } } } }
                    label { "Devices (label selector)" input name="selector" placeholder="site=lab  (empty: all)"; }
                    label { "Canary devices" input name="canary" type="number" min="0" value="1"; }
                    label { "Waves (cumulative %)" input name="waves" value="10,50,100"; }
                    label { "Halt after failures" input name="halt_after" type="number" min="1" value="1"; }
                    label { "Rollout id (optional)" input name="id"; }
                    button.primary #start-button type="submit" { "Start rollout" }
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
) -> DashResult<Response> {
    if is_htmx(&headers) {
        return live_fragment(&app, &caller, &uri, || async {
            let rollouts = app.fleet.rollouts().await?;
            Ok(region(&rollouts))
        })
        .await;
    }
    let rollouts = app.fleet.rollouts().await?;
    let bundles = if caller.is_admin() { app.fleet.bundles().await? } else { Vec::new() };
    let body = html! {
        h1 { "Rollouts" }
        div.panel { (region(&rollouts)) }
        @if caller.is_admin() { (start_form(&bundles, &caller)) }
    };
    Ok(layout("Rollouts", Nav::Rollouts, &caller, body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StartForm {
    bundle: String,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    canary: String,
    #[serde(default)]
    waves: String,
    #[serde(default)]
    halt_after: String,
    #[serde(default)]
    id: String,
}

fn number<T: std::str::FromStr>(field: &str, raw: &str) -> DashResult<Option<T>> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| DashError::BadRequest(format!("{field}: {raw:?} is not a number")))
}

pub async fn start<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Form(form): Form<StartForm>,
) -> DashResult<Response> {
    let target = match form.selector.trim() {
        "" => Target::All,
        sel => Target::Selector(sel.to_string()),
    };
    let mut args = StartArgs::from_defaults(&app.defaults, &form.bundle, target);
    if let Some(c) = number("canary", &form.canary)? {
        args.canary = c;
    }
    if !form.waves.trim().is_empty() {
        args.waves = form
            .waves
            .split(',')
            .map(|w| number::<u8>("waves", w))
            .collect::<DashResult<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
    }
    if let Some(n) = number("halt_after", &form.halt_after)? {
        args.policy.halt = HaltThreshold::Count(n);
    }
    args.id = Some(form.id.trim().to_string()).filter(|s| !s.is_empty());
    let rollout = app.fleet.start_rollout(&actor(&caller), &args).await?;
    let to = format!("/rollouts/{}", rollout.id);
    let mut res =
        (StatusCode::OK, html! { div.flash.flash-ok { "Rollout " (rollout.id) " started." } }).into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        res.headers_mut().insert("hx-redirect", v);
    }
    Ok(res)
}
