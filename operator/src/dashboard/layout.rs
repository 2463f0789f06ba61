//! The page shell: head (our CSS and scripts only), top bar with the
//! navigation and the user, the flash area, and the live-update stream.

use super::guard::Caller;
use super::widgets::{badge, csrf_field};
use crate::config::DashboardRole;
use maud::{html, Markup, DOCTYPE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Devices,
    Rollouts,
    Bundles,
    Audit,
    Pending,
    Tokens,
}

const NAV: [(Nav, &str, &str, &str); 7] = [
    (Nav::Overview, "overview", "/", "Overview"),
    (Nav::Devices, "devices", "/devices", "Devices"),
    (Nav::Pending, "pending", "/pending", "Pending"),
    (Nav::Rollouts, "rollouts", "/rollouts", "Rollouts"),
    (Nav::Bundles, "bundles", "/bundles", "Bundles"),
    (Nav::Tokens, "tokens", "/tokens", "Tokens"),
    (Nav::Audit, "audit", "/audit", "Audit log"),
];

/// htmx settings: no eval (so `hx-on`/`js:` never run), no script tags from
/// swapped fragments, no indicator `<style>` element (the CSP would refuse
/// it), no page snapshots in localStorage (they would hold the CSRF token).
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"historyCacheSize":0,"refreshOnHistoryMiss":true,"selfRequestsOnly":true}"#;

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            @if let Some(token) = csrf { meta name="csrf-token" content=(token); }
            title { (title) " · Harmony Fleet" }
            link rel="stylesheet" href="/assets/dashboard.css";
            script src="/assets/htmx.min.js" defer {}
            script src="/assets/htmx-ext-sse.min.js" defer {}
            script src="/assets/dashboard.js" defer {}
        }
    }
}

fn role_name(role: DashboardRole) -> &'static str {
    match role {
        DashboardRole::Admin => "admin",
        DashboardRole::Viewer => "viewer",
    }
}

/// A full page for a logged-in user.
pub fn page(title: &str, active: Nav, caller: &Caller, content: Markup) -> Markup {
    let csrf_headers = format!(r#"{{"X-CSRF-Token":"{}"}}"#, caller.session.csrf);
    let role = role_name(caller.session.role);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&caller.session.csrf)))
            body hx-ext="sse" sse-connect="/events" hx-headers=(csrf_headers) {
                header.topbar {
                    a.brand href="/" { span.brand-mark {} "Harmony Fleet" }
                    nav #nav {
                        @for (nav, key, href, label) in NAV {
                            a.active[nav == active] href=(href) data-nav=(key) { (label) }
                        }
                    }
                    div #whoami data-role=(role) {
                        span.live-dot title="live updates" {}
                        span { (caller.session.user) }
                        (badge(role))
                        form #logout-form method="post" action="/logout" {
                            (csrf_field(caller))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    div #flash aria-live="polite" {}
                    (content)
                }
                footer { "Harmony Fleet operator " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}

/// A page without the navigation (the login page).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body { (content) }
        }
    }
}
