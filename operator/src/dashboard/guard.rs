//! The gate in front of every page but the login page and the assets:
//! a live session is required; a state-changing request must carry the
//! session's CSRF token (header `X-CSRF-Token`, or form field `csrf`) and,
//! except for logging out, come from an admin.

use super::error::DashError;
use super::session::{id_from_headers, same_token, Session};
use super::AppState;
use crate::config::DashboardRole;
use crate::fleet::FleetService;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "csrf";
/// Largest urlencoded form body we read to find the token.
const FORM_LIMIT: usize = 64 * 1024;

/// The logged-in user, for handlers (`Extension<Caller>`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub session_id: String,
    pub session: Session,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.session.role == DashboardRole::Admin
    }
}

fn login_redirect(req: &Request) -> Response {
    if req.headers().contains_key("hx-request") {
        // htmx follows HX-Redirect with a full page load.
        let mut res = StatusCode::UNAUTHORIZED.into_response();
        res.headers_mut().insert("hx-redirect", HeaderValue::from_static("/login"));
        return res;
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response();
    }
    DashError::Unauthenticated.into_response()
}

fn is_form(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The CSRF token the request carries, and the request to pass on (a form
/// body read to find the token is put back).
async fn presented_token(req: Request) -> Result<(Option<String>, Request), Response> {
    if let Some(v) = req.headers().get(CSRF_HEADER) {
        let token = v.to_str().ok().map(str::to_string);
        return Ok((token, req));
    }
    if !is_form(&req) {
        return Ok((None, req));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| DashError::BadRequest("form too large".into()).into_response())?;
    let token = form_urlencoded_field(&bytes, CSRF_FIELD);
    Ok((token, Request::from_parts(parts, Body::from(bytes))))
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub async fn require_session<S: FleetService>(State(app): State<AppState<S>>, req: Request, next: Next) -> Response {
    let Some(id) = id_from_headers(req.headers()) else { return login_redirect(&req) };
    let Some(session) = app.sessions.touch(&id) else { return login_redirect(&req) };
    let mut req = req;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let (token, passed) = match presented_token(req).await {
            Ok(t) => t,
            Err(res) => return res,
        };
        req = passed;
        if !token.is_some_and(|t| same_token(&t, &session.csrf)) {
            log::warn!(
                "dashboard: {} {} by {:?} without a valid CSRF token",
                req.method(),
                req.uri().path(),
                session.user
            );
            return DashError::Forbidden("missing or wrong CSRF token").into_response();
        }
        if req.uri().path() != "/logout" && session.role != DashboardRole::Admin {
            return DashError::Forbidden("viewers cannot change anything").into_response();
        }
    }
    req.extensions_mut().insert(Caller { session_id: id, session });
    next.run(req).await
}
