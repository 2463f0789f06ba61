//! Logging in and out.

use crate::dashboard::error::DashError;
use crate::dashboard::guard::Caller;
use crate::dashboard::layout::bare;
use crate::dashboard::session::{cookie, id_from_headers};
use crate::dashboard::AppState;
use crate::fleet::FleetService;
use axum::extract::{Form, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

fn login_page(error: Option<&str>, no_users: bool) -> Markup {
    bare(
        "Log in",
        html! {
            div.login-wrap {
                div.panel.login {
                    h1 { span.brand-mark {} "Harmony Fleet" }
                    @if no_users {
                        div.flash.flash-error {
                            "No dashboard users are configured: add [[dashboard.users]] to the operator config \
                             (hash a password with `harmony-operator dashboard hash-password`)."
                        }
                    }
                    @if let Some(e) = error { div.flash.flash-error role="alert" { (e) } }
                    form #login-form method="post" action="/login" {
                        label for="username" { "User" }
                        input #username name="username" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input #password name="password" type="password" autocomplete="current-password" required;
                        button #login-submit.primary type="submit" { "Log in" }
                    }
                }
            }
        },
    )
}

pub async fn show<S: FleetService>(State(app): State<AppState<S>>, headers: HeaderMap) -> Response {
    if id_from_headers(&headers).is_some_and(|id| app.sessions.touch(&id).is_some()) {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    }
    login_page(None, app.users.is_empty()).into_response()
}

pub async fn submit<S: FleetService>(State(app): State<AppState<S>>, Form(form): Form<LoginForm>) -> Response {
    if let Err(wait) = app.throttle.check(&form.username) {
        let e = DashError::Throttled(wait);
        return (e.status(), login_page(Some(&e.to_string()), false)).into_response();
    }
    let Some((user, role)) = app.users.check(&form.username, &form.password).await else {
        app.throttle.failed(&form.username);
        log::warn!("dashboard: failed login for {:?}", form.username);
        return (StatusCode::UNAUTHORIZED, login_page(Some("Wrong user name or password."), app.users.is_empty()))
            .into_response();
    };
    app.throttle.succeeded(&form.username);
    let Some((id, _)) = app.sessions.create(&user, role) else {
        return DashError::Internal("cannot open a session now".into()).into_response();
    };
    log::info!("dashboard: {user:?} logged in");
    let set = cookie(&id, app.sessions.max_age(), app.secure_cookie);
    (StatusCode::SEE_OTHER, [(LOCATION, "/".to_string()), (SET_COOKIE, set)]).into_response()
}

pub async fn logout<S: FleetService>(State(app): State<AppState<S>>, Extension(caller): Extension<Caller>) -> Response {
    app.sessions.remove(&caller.session_id);
    log::info!("dashboard: {:?} logged out", caller.session.user);
    let clear = cookie("", Duration::ZERO, app.secure_cookie);
    (StatusCode::SEE_OTHER, [(LOCATION, "/login".to_string()), (SET_COOKIE, clear)]).into_response()
}
