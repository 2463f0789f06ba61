//! Bundles: version, compatible, size, sha256, the rollouts using them; and
//! (admins) upload with progress, and removal.
//!
//! An upload is a multipart POST (htmx reports its progress to
//! `dashboard.js`). The file is spooled to a private temporary file, then
//! pushed like `bundle push` does (the manifest is read from the file).

use super::{actor, is_htmx, live_fragment, now};
use crate::dashboard::error::{DashError, DashResult};
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::{page as layout, Nav};
use crate::dashboard::session::random_token;
use crate::dashboard::widgets::{bytes, csrf_field, when};
use crate::dashboard::AppState;
use crate::fleet::{BundlePush, BundleView, FleetService};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

fn region(bundles: &[BundleView], caller: &Caller) -> Markup {
    let now = now();
    html! {
        div #bundles-region hx-get="/bundles" hx-trigger="sse:bundles" hx-swap="outerHTML" hx-disinherit="*" {
            div.table-wrap {
                table #bundles-table {
                    thead { tr { th { "Bundle" } th { "Version" } th { "Compatible" } th.count { "Size" } th { "SHA-256" } th { "Pushed" } th { "In use by" } @if caller.is_admin() { th {} } } }
                    tbody {
                        @for b in bundles {
                            @let r = &b.record;
                            tr.bundle-row data-bundle-id=(r.id) {
                                td { code { (r.id) } }
                                td { code { (r.version) } }
                                td { code { (r.compatible) } }
                                td.count { (bytes(r.size)) }
                                td { code title=(r.sha256) { (r.sha256.get(..16).unwrap_or(&r.sha256)) "…" } }
                                td { (when(r.pushed_at, now)) }
                                td { @for id in &b.in_use_by { a href={ "/rollouts/" (id) } { (id) } " " } }
                                @if caller.is_admin() {
                                    td {
                                        @if b.in_use_by.is_empty() {
                                            button.danger.remove-bundle hx-post={ "/bundles/" (r.id) "/remove" } hx-target="#flash"
                                                hx-confirm="Remove this bundle?" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                        @if bundles.is_empty() { tr { td.muted colspan="8" { "No bundles yet." } } }
                    }
                }
            }
        }
    }
}

fn upload_form(caller: &Caller) -> Markup {
    html! {
        div.panel {
            h2 { "Upload a bundle" }
            form #upload-form.filters hx-post="/bundles" hx-encoding="multipart/form-data" hx-target="#upload-result" {
                (csrf_field(caller))
                label { "RAUC bundle (.raucb)" input type="file" name="bundle" required; }
                label { "Name (default: its version)" input name="id"; }
                button.primary #upload-button type="submit" { "Upload" }
            }
            progress #upload-progress value="0" max="100" {}
            div #upload-result {}
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
            let bundles = app.fleet.bundles().await?;
            Ok(region(&bundles, &caller))
        })
        .await;
    }
    let bundles = app.fleet.bundles().await?;
    let body = html! {
        h1 { "Bundles" }
        div.panel { (region(&bundles, &caller)) }
        @if caller.is_admin() { (upload_form(&caller)) }
    };
    Ok(layout("Bundles", Nav::Bundles, &caller, body).into_response())
}

/// A spooled upload, removed however the request ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("dashboard: cannot remove upload spool {}: {e}", self.0.display());
            }
        }
    }
}

async fn spool_file(field: &mut axum::extract::multipart::Field<'_>) -> DashResult<(Spool, u64)> {
    let name = random_token().map_err(|e| DashError::Internal(format!("no randomness: {e}")))?;
    let path = std::env::temp_dir().join(format!("harmony-upload-{}.raucb", &name[..16]));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let mut file =
        options.open(&path).await.map_err(|e| DashError::Internal(format!("spool {}: {e}", path.display())))?;
    let spool = Spool(path);
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| DashError::BadRequest(format!("upload: {e}")))? {
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| DashError::Internal(format!("spool: {e}")))?;
    }
    file.flush().await.map_err(|e| DashError::Internal(format!("spool: {e}")))?;
    Ok((spool, size))
}

pub async fn upload<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    mut form: Multipart,
) -> DashResult<Markup> {
    let mut spooled = None;
    let mut id = None;
    while let Some(mut field) = form.next_field().await.map_err(|e| DashError::BadRequest(format!("upload: {e}")))? {
        match field.name() {
            Some("bundle") => spooled = Some(spool_file(&mut field).await?),
            Some("id") => {
                let text = field.text().await.map_err(|e| DashError::BadRequest(format!("upload: {e}")))?;
                id = Some(text.trim().to_string()).filter(|s| !s.is_empty());
            }
            _ => {}
        }
    }
    let Some((spool, size)) = spooled else { return Err(DashError::BadRequest("no file in field \"bundle\"".into())) };
    log::info!("dashboard: {:?} uploaded {size} bytes", caller.session.user);
    let push = BundlePush { path: spool.0.clone(), id, progress_bar: false };
    let record = app.fleet.push_bundle(&actor(&caller), &push).await?;
    Ok(html! {
        div.flash.flash-ok #upload-ok data-bundle-id=(record.id) {
            "Bundle " code { (record.id) } " (version " code { (record.version) } ", " (bytes(record.size)) ") stored."
        }
    })
}

pub async fn remove<S: FleetService>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> DashResult<Markup> {
    app.fleet.remove_bundle(&actor(&caller), &id).await?;
    Ok(html! { div.flash.flash-ok { "Bundle " code { (id) } " removed." } })
}
