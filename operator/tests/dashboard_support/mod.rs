//! Dashboard test fixtures: the real operator and coordinator on a real
//! nats-server with simulated devices (tests/common), the dashboard router
//! over the real `KvFleet`, users with argon2 hashes, and a logged-in
//! client that keeps its cookie and CSRF token.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{header, Method, Request, Response, StatusCode};
use axum::Router;
use harmony_operator::config::{DashboardConfig, DashboardRole, DashboardUser};
use http_body_util::BodyExt;
use std::sync::OnceLock;
use tower::ServiceExt;

use crate::common::{Env, Operator};
use harmony_operator::fleet::KvFleet;
use std::sync::Arc;

/// A real fleet (nats-server, operator loop, simulated devices) and the
/// dashboard router over a live `KvFleet` of it.
pub struct Dash {
    pub env: Env,
    pub op: Operator,
    pub router: Router,
}

pub async fn start() -> Dash {
    let env = Env::start().await;
    let op = Operator::start(&env.cfg);
    let mut cfg = env.cfg.clone();
    cfg.dashboard = dashboard_config();
    let fleet = Arc::new(KvFleet::live(env.buckets.clone(), cfg.fleet.clone()).await.unwrap());
    let router = harmony_operator::dashboard::router(fleet, &cfg).unwrap();
    Dash { env, op, router }
}

pub const ADMIN: (&str, &str) = ("alice", "alice-password");
pub const VIEWER: (&str, &str) = ("bob", "bob-password");

/// Hashing is slow on purpose: do it once per test binary.
fn hashes() -> &'static (String, String) {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    HASHES.get_or_init(|| {
        (
            harmony_operator::dashboard::hash_password(ADMIN.1).unwrap(),
            harmony_operator::dashboard::hash_password(VIEWER.1).unwrap(),
        )
    })
}

pub fn dashboard_config() -> DashboardConfig {
    let (admin, viewer) = hashes().clone();
    DashboardConfig {
        live_coalesce_millis: 100,
        users: vec![
            DashboardUser { name: ADMIN.0.into(), password_hash: admin, role: DashboardRole::Admin },
            DashboardUser { name: VIEWER.0.into(), password_hash: viewer, role: DashboardRole::Viewer },
        ],
        ..DashboardConfig::default()
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let res: Response<Body> = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// A browser's worth of state: the session cookie and the page's CSRF token.
#[derive(Debug, Clone)]
pub struct Client {
    pub cookie: String,
    pub csrf: String,
}

pub fn form_body(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}

pub async fn login_reply(router: &Router, user: &str, password: &str) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form_body(&[("username", user), ("password", password)])))
        .unwrap();
    send(router, req).await
}

/// Logs in and reads the CSRF token from the overview page.
pub async fn login(router: &Router, user: &str, password: &str) -> Client {
    let r = login_reply(router, user, password).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "login as {user}: {}", r.body);
    let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let mut client = Client { cookie, csrf: String::new() };
    let page = client.get(router, "/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let marker = "name=\"csrf-token\" content=\"";
    let start = page.body.find(marker).unwrap() + marker.len();
    let end = start + page.body[start..].find('"').unwrap();
    client.csrf = page.body[start..end].to_string();
    client
}

impl Client {
    pub async fn get(&self, router: &Router, uri: &str) -> Reply {
        let req = Request::builder().uri(uri).header(header::COOKIE, &self.cookie).body(Body::empty()).unwrap();
        send(router, req).await
    }

    /// A POST as htmx sends it: the CSRF token in its header.
    pub async fn post(&self, router: &Router, uri: &str, fields: &[(&str, &str)]) -> Reply {
        self.htmx_post(router, uri, "application/x-www-form-urlencoded", form_body(fields).into_bytes()).await
    }

    async fn htmx_post(&self, router: &Router, uri: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::COOKIE, &self.cookie)
            .header("hx-request", "true")
            .header(harmony_operator::dashboard::CSRF_HEADER, &self.csrf)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        send(router, req).await
    }

    /// A POST with whatever CSRF token the test says (none, or a wrong one).
    pub async fn post_with_token(&self, router: &Router, uri: &str, token: Option<&str>) -> Reply {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::COOKIE, &self.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let body = match token {
            Some(t) => form_body(&[("csrf", t)]),
            None => String::new(),
        };
        b = b.header(header::CONTENT_LENGTH, body.len());
        send(router, b.body(Body::from(body)).unwrap()).await
    }
}

impl Client {
    /// A multipart POST as htmx sends a file form (`hx-encoding`): parts are
    /// (field name, file name if a file, content).
    pub async fn post_multipart(&self, router: &Router, uri: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Reply {
        let boundary = "harmony-test-boundary-7f3a";
        let mut body = Vec::new();
        for (name, file, content) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body
                    .extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
            }
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        self.htmx_post(router, uri, &format!("multipart/form-data; boundary={boundary}"), body).await
    }
}
