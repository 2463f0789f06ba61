//! The web dashboard (issue 13): server-rendered HTML over the
//! [`FleetService`], every interaction an HTTP request answered by an HTML
//! fragment (htmx), live updates over SSE. Login required; admins act,
//! viewers read; CSRF token on every state-changing request.
//!
//! Presentation never reaches past the trait: the same dashboard runs on the
//! leader and on a standby, over the real KV state.

mod assets;
mod auth;
mod error;
mod fragments;
mod guard;
mod headers;
mod layout;
mod live;
mod pages;
mod session;
mod throttle;
mod widgets;
mod with_operator;

pub use auth::hash_password;
pub use error::DashError;
pub use guard::CSRF_HEADER;
pub use headers::CSP;
pub use session::COOKIE;
pub use with_operator::run_with_dashboard;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::FleetService;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// Everything a handler needs, shared by all requests.
#[derive(Debug)]
pub struct App<S> {
    pub(crate) fleet: Arc<S>,
    pub(crate) sessions: session::Sessions,
    pub(crate) users: auth::Users,
    pub(crate) throttle: throttle::LoginThrottle,
    pub(crate) live: live::LiveHub,
    pub(crate) fragments: fragments::FragmentCache,
    pub(crate) secure_cookie: bool,
    /// The config's `[rollout]` defaults, for rollouts started here.
    pub(crate) defaults: Config,
}

/// axum state: a cheap handle on the [`App`] (cloned per request).
#[derive(Debug)]
pub struct AppState<S>(Arc<App<S>>);

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Deref for AppState<S> {
    type Target = App<S>;
    fn deref(&self) -> &App<S> {
        &self.0
    }
}

/// The dashboard's routes over `fleet`. Must be called inside a tokio
/// runtime (it starts the live-update task).
pub fn router<S: FleetService>(fleet: Arc<S>, config: &Config) -> Result<Router> {
    build(fleet, config).map(|(router, _)| router)
}

fn build<S: FleetService>(fleet: Arc<S>, config: &Config) -> Result<(Router, AppState<S>)> {
    let cfg = &config.dashboard;
    let users = auth::Users::new(cfg.users.clone()).map_err(|e| Error::Invalid(format!("dashboard users: {e}")))?;
    let window = Duration::from_millis(cfg.live_coalesce_millis.max(10));
    let live = live::LiveHub::start(fleet.clone(), window);
    let app = AppState(Arc::new(App {
        fleet,
        sessions: session::Sessions::new(
            Duration::from_secs(cfg.session_idle_secs.max(60)),
            Duration::from_secs(cfg.session_max_secs.max(60)),
        ),
        users,
        throttle: throttle::LoginThrottle::default(),
        live,
        fragments: fragments::FragmentCache::new(window),
        secure_cookie: cfg.secure_cookie,
        defaults: config.clone(),
    }));
    let upload_limit = usize::try_from(cfg.max_upload_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let protected = Router::new()
        .route("/", get(pages::overview::page::<S>))
        .route("/devices", get(pages::devices::page::<S>))
        .route("/devices/{id}", get(pages::device::page::<S>))
        .route("/devices/{id}/ping", post(pages::device::ping::<S>))
        .route("/devices/{id}/reboot", post(pages::device::reboot::<S>))
        .route("/devices/{id}/accept", post(pages::enrollment::accept::<S>))
        .route("/devices/{id}/reject", post(pages::enrollment::reject::<S>))
        .route("/devices/{id}/revoke", post(pages::enrollment::revoke::<S>))
        .route("/pending", get(pages::enrollment::pending::<S>))
        .route("/tokens", get(pages::enrollment::tokens::<S>).post(pages::enrollment::create_token::<S>))
        .route("/tokens/{id}/revoke", post(pages::enrollment::revoke_token::<S>))
        .route("/rollouts", get(pages::rollouts::page::<S>).post(pages::rollouts::start::<S>))
        .route("/rollouts/{id}", get(pages::rollout::page::<S>))
        .route("/rollouts/{id}/{control}", post(pages::rollout::control::<S>))
        .route(
            "/bundles",
            get(pages::bundles::page::<S>).post(pages::bundles::upload::<S>).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/bundles/{id}/remove", post(pages::bundles::remove::<S>))
        .route("/audit", get(pages::audit::page::<S>))
        .route("/events", get(events::<S>))
        .route("/logout", post(pages::login::logout::<S>))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), guard::require_session::<S>));
    let router = Router::new()
        .route("/login", get(pages::login::show::<S>).post(pages::login::submit::<S>))
        .route("/assets/{name}", get(assets::asset))
        // Browsers ask for it on every site; no icon, and no 404 in their console.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .merge(protected)
        .layer(axum::middleware::from_fn(guard::require_same_origin))
        .layer(axum::middleware::from_fn(headers::security_headers))
        .with_state(app.clone());
    Ok((router, app))
}

async fn events<S: FleetService>(
    axum::extract::State(app): axum::extract::State<AppState<S>>,
    axum::Extension(caller): axum::Extension<guard::Caller>,
) -> impl axum::response::IntoResponse {
    let sessions = app.clone();
    live::stream(&app.live, move || sessions.sessions.is_live(&caller.session_id))
}

/// Whether an address is this host only.
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves the dashboard on `listen` until `shutdown` resolves.
pub async fn serve<S: FleetService>(
    fleet: Arc<S>,
    config: &Config,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cfg = &config.dashboard;
    let addr: SocketAddr =
        listen.parse().map_err(|e| Error::Invalid(format!("dashboard listen address {listen:?}: {e}")))?;
    if !is_loopback(&addr) && !cfg.secure_cookie {
        log::warn!(
            "dashboard listens on {addr}, beyond this host, without secure_cookie: put a TLS reverse proxy in \
             front and set [dashboard] secure_cookie = true (see docs/dashboard.md)"
        );
    }
    if cfg.users.is_empty() {
        log::warn!("dashboard: no [[dashboard.users]] configured; nobody can log in");
    }
    let (router, app) = build(fleet, config)?;
    let shutdown = async move {
        shutdown.await;
        app.live.close();
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(format!("dashboard {addr}"), e))?;
    log::info!("dashboard on http://{addr}/");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(|e| Error::io("dashboard", e))
}
