//! The dashboard's handlers against the real thing: a nats-server, the real
//! operator loop (coordinator) and simulated devices, the real `KvFleet`
//! behind the router. Requests go through the router in-process; the SSE
//! test goes over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dashboard_support;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::sim::Behavior;
use common::{dev, eventually, Env};
use dashboard_support::{login, login_reply, send, start, ADMIN, VIEWER};
use harmony_operator::model::RolloutStatus;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every live region (an element that refetches itself on an SSE topic)
/// stops htmx inheritance: otherwise its buttons inherit its
/// `hx-swap="outerHTML"` and their answer replaces `#flash` itself, after
/// which every later action on the page has no target.
fn assert_live_regions_disinherit(uri: &str, body: &str) {
    let mut regions = 0;
    for (at, _) in body.match_indices(r#"hx-trigger="sse:"#) {
        let start = body[..at].rfind('<').unwrap();
        let tag = &body[start..at + body[at..].find('>').unwrap()];
        assert!(tag.contains(r#"hx-disinherit="*""#), "{uri}: live region without hx-disinherit: {tag}");
        regions += 1;
    }
    assert!(regions > 0, "{uri}: no live region");
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn pages_need_a_login_and_carry_the_security_headers() {
    let d = start().await;
    // A browser is sent to the login page...
    let r = send(&d.router, get("/")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/login");
    let r = send(&d.router, get("/devices")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // ... htmx is told to go there, and anything else gets 401.
    let r =
        send(&d.router, Request::builder().uri("/rollouts").header("hx-request", "true").body(Body::empty()).unwrap())
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["hx-redirect"], "/login");
    let post = Request::builder().method(Method::POST).uri("/rollouts/r1/pause").body(Body::empty()).unwrap();
    assert_eq!(send(&d.router, post).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&d.router, get("/events")).await.status, StatusCode::SEE_OTHER);
    // A forged session cookie is no session.
    let forged = Request::builder().uri("/").header(header::COOKIE, format!("harmony_session={}", "0".repeat(64)));
    assert_eq!(send(&d.router, forged.body(Body::empty()).unwrap()).await.status, StatusCode::SEE_OTHER);

    let login_page = send(&d.router, get("/login")).await;
    assert_eq!(login_page.status, StatusCode::OK);
    assert!(login_page.body.contains(r#"name="username""#) && login_page.body.contains(r#"name="password""#));
    for r in [&login_page, &send(&d.router, get("/assets/htmx.min.js")).await] {
        let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    // Logged in, every page renders, with no inline script or style.
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    for uri in ["/", "/devices", "/rollouts", "/bundles", "/audit", "/pending", "/tokens"] {
        let r = admin.get(&d.router, uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        assert!(r.headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
        assert!(!r.body.contains("<script>") && !r.body.contains(" style=") && !r.body.contains(" onclick="), "{uri}");
        assert_live_regions_disinherit(uri, &r.body);
    }
    d.op.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_throttled() {
    let d = start().await;
    let r = login_reply(&d.router, ADMIN.0, "not-the-password").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.headers.contains_key(header::SET_COOKIE));
    assert!(r.body.contains("Wrong user name or password"));
    let r = login_reply(&d.router, "mallory", ADMIN.1).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The viewer's password is not the admin's.
    assert_eq!(login_reply(&d.router, ADMIN.0, VIEWER.1).await.status, StatusCode::UNAUTHORIZED);
    for _ in 0..3 {
        login_reply(&d.router, ADMIN.0, "guess").await;
    }
    // Five failures: the next attempt for this name must wait, even with the right password.
    let r = login_reply(&d.router, ADMIN.0, ADMIN.1).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    // Other names are not affected.
    login(&d.router, VIEWER.0, VIEWER.1).await;
    d.op.stop().await;
}

#[tokio::test]
async fn state_changes_need_the_csrf_token_and_an_admin() {
    let d = start().await;
    d.env.devices(&["d1", "d2"], Behavior::Manual).await;
    d.env.rollout(&d.env.start_args(&["d1", "d2"])).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let viewer = login(&d.router, VIEWER.0, VIEWER.1).await;

    // No token, a wrong token, another session's token: 403.
    let r = admin.post_with_token(&d.router, "/rollouts/r1/pause", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("CSRF"));
    let r = admin.post_with_token(&d.router, "/rollouts/r1/pause", Some(&"f".repeat(64))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = admin.post_with_token(&d.router, "/rollouts/r1/pause", Some(&viewer.csrf)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The right token as a form field is accepted (this one is the viewer's own).
    for uri in [
        "/rollouts/r1/pause",
        "/rollouts/r1/abort",
        "/devices/d1/reboot",
        "/devices/d1/ping",
        "/rollouts",
        "/devices/d1/accept",
        "/devices/d1/reject",
        "/devices/d1/revoke",
        "/tokens",
        "/tokens/0123456789ab/revoke",
    ] {
        let r = viewer.post(&d.router, uri, &[("bundle", "2.0")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "viewer POST {uri}: {}", r.body);
    }
    let r = viewer.post_with_token(&d.router, "/rollouts/r1/pause", Some(&viewer.csrf)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A page of another site cannot post, even with the right token; nor log in.
    let cross = |uri: &str, origin: &str| {
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, &admin.cookie)
            .header(harmony_operator::dashboard::CSRF_HEADER, &admin.csrf)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(dashboard_support::form_body(&[("username", ADMIN.0), ("password", ADMIN.1)])))
            .unwrap()
    };
    assert_eq!(send(&d.router, cross("/rollouts/r1/pause", "http://evil.example")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(&d.router, cross("/login", "http://127.0.0.1.evil.example")).await.status, StatusCode::FORBIDDEN);
    // The same origin passes.
    assert_eq!(send(&d.router, cross("/login", "http://127.0.0.1:8080")).await.status, StatusCode::SEE_OTHER);
    // A viewer sees no control buttons.
    let page = viewer.get(&d.router, "/rollouts/r1").await;
    assert!(!page.body.contains("pause-button") && !page.body.contains("abort-button"));
    // Nothing reached the coordinator.
    d.env.operator_caught_up().await;
    assert_eq!(d.env.rollout_state("r1").await.status, RolloutStatus::Running);
    // The viewer can log out (with the token).
    let r = viewer.post_with_token(&d.router, "/logout", Some(&viewer.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(viewer.get(&d.router, "/").await.status, StatusCode::SEE_OTHER);
    d.op.stop().await;
}

async fn wait_status(env: &Env, id: &str, want: &str) {
    eventually(20, &format!("rollout {id} {want}"), || async { env.rollout_state(id).await.status.name() == want })
        .await;
}

#[tokio::test]
async fn admin_pause_resume_abort_reach_the_coordinator() {
    let d = start().await;
    d.env.devices(&["d1", "d2", "d3"], Behavior::Manual).await;
    d.env.rollout(&d.env.start_args(&["d1", "d2", "d3"])).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let page = admin.get(&d.router, "/rollouts/r1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"id="rollout-status""#) && page.body.contains("pause-button"));
    assert!(page.body.contains(r#"data-stage="pending""#) || page.body.contains(r#"data-stage="offered""#));

    let r = admin.post(&d.router, "/rollouts/r1/pause", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_status(&d.env, "r1", "paused").await;
    let page = admin.get(&d.router, "/rollouts/r1").await;
    assert!(page.body.contains(r#"data-status="paused""#) && page.body.contains("resume-button"));
    assert_live_regions_disinherit("/rollouts/r1", &page.body);

    admin.post(&d.router, "/rollouts/r1/resume", &[]).await;
    wait_status(&d.env, "r1", "running").await;
    admin.post(&d.router, "/rollouts/r1/abort", &[]).await;
    wait_status(&d.env, "r1", "aborted").await;
    let r = admin.post(&d.router, "/rollouts/r1/explode", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Each action is in the audit log under the dashboard user.
    eventually(10, "audit entries", || async {
        let log = admin.get(&d.router, "/audit").await.body;
        log.matches(r#"<td class="actor">alice</td>"#).count() >= 3
    })
    .await;
    let log = admin.get(&d.router, "/audit").await.body;
    for action in ["rollout pause", "rollout resume", "rollout abort"] {
        assert!(log.contains(action), "{action} missing from the audit page");
    }
    d.op.stop().await;
}

#[tokio::test]
async fn device_reported_strings_render_as_text() {
    let d = start().await;
    let evil = "<script>alert(1)</script>";
    d.env.fleet.add({
        let mut s = common::sim::SimState::new(dev("evil"), evil, Behavior::Manual);
        s.labels.insert(evil.into(), "<img src=x onerror=alert(2)>".into());
        s.health = harmony_protocol::HealthStatus::Unhealthy;
        s
    });
    d.env.fleet.beat(&dev("evil")).await.unwrap();
    // Its workload status (issue #15) is the device's text too.
    let status = serde_json::json!({
        "schema": 1, "device_id": "evil", "observed_generation": 1, "boot_id": evil, "updated_at": 1,
        "conditions": {"converged": false},
        "resources": {evil: {"state": "failed", "since": 1, "error": evil, "attempts": 1, "retry_after": 2}},
    });
    let statuses = d.env.buckets.workload_statuses().await.unwrap();
    statuses.put("evil", serde_json::to_vec(&status).unwrap().into()).await.unwrap();
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    eventually(20, "the device page", || async {
        admin.get(&d.router, "/devices/evil").await.status == StatusCode::OK
    })
    .await;
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for uri in ["/devices/evil", "/devices", "/devices?q=evil", "/"] {
        let page = admin.get(&d.router, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert!(!page.body.contains(evil) && !page.body.contains("<img src=x"), "{uri} has raw device markup");
        if uri == "/devices/evil" {
            assert!(page.body.contains(escaped), "{uri}: {}", page.body);
            assert!(page.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
            assert!(page.body.contains(r#"id="workload-resources""#), "no workloads section: {}", page.body);
            assert!(page.body.contains(r#"data-resource-id="&lt;script&gt;alert(1)&lt;/script&gt;""#));
        }
    }
    // The filter echoes what was typed, escaped too.
    let page = admin.get(&d.router, "/devices?q=%3Cscript%3E").await;
    assert!(!page.body.contains("value=\"<script>"));
    d.op.stop().await;
}

/// Reads from the socket until `needle` shows up (or fails after `secs`).
async fn read_until(sock: &mut tokio::net::TcpStream, seen: &mut String, needle: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within {secs} s; got {seen:?}"))
            .unwrap();
        assert!(n > 0, "stream closed before {needle:?}: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn sse_stream_reports_a_heartbeat_change_over_a_real_socket() {
    let d = start().await;
    d.env.devices(&["d1"], Behavior::Manual).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = d.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        admin.cookie
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut sock, &mut seen, "event: hello", 10).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.to_ascii_lowercase().contains("content-type: text/event-stream"), "{seen}");

    // The device reports a new version: the stream says devices changed.
    d.env.fleet.with(&dev("d1"), |s| s.os_version = "1.1".into());
    d.env.fleet.beat(&dev("d1")).await.unwrap();
    read_until(&mut sock, &mut seen, "event: devices", 20).await;
    assert!(seen.contains("event: overview"));

    // Logging out ends the stream at the next update (the chunked body ends).
    let r = admin.post_with_token(&d.router, "/logout", Some(&admin.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    seen.clear();
    d.env.fleet.with(&dev("d1"), |s| s.os_version = "1.2".into());
    d.env.fleet.beat(&dev("d1")).await.unwrap();
    read_until(&mut sock, &mut seen, "0\r\n\r\n", 20).await;
    assert!(!seen.contains("event: devices"), "an event after logout: {seen:?}");
    server.abort();
    d.op.stop().await;
}

#[tokio::test]
async fn sse_coalesces_a_burst_of_device_changes() {
    let d = start().await;
    let names: Vec<String> = (0..50).map(|i| format!("b{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    d.env.devices(&refs, Behavior::Manual).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = d.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    // Let the initial heartbeats' changes pass before listening.
    eventually(10, "50 devices indexed", || async {
        admin.get(&d.router, "/devices").await.body.contains(r#"data-total="50""#)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\n\r\n", admin.cookie);
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut sock, &mut seen, "event: hello", 10).await;
    seen.clear();

    // 200 heartbeat changes (every device reports a new version, four times).
    let started = std::time::Instant::now();
    for round in 0..4 {
        for n in &names {
            d.env.fleet.with(&dev(n), |s| s.os_version = format!("1.{round}"));
            d.env.fleet.beat(&dev(n)).await.unwrap();
        }
    }
    let burst = started.elapsed();
    // Read until the stream has been quiet for five windows (100 ms each).
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), sock.read(&mut buf)).await {
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let events = seen.matches("event: devices").count();
    let windows = (burst.as_millis() / 100) as usize;
    assert!(events >= 1, "no devices event for 200 changes");
    // One event per window at most (plus the window open when the burst
    // began and the one that closes it), far below one per change.
    assert!(events <= windows + 2, "{events} events for {windows} windows of a {burst:?} burst");
    assert!(events < 50, "{events} events for 200 changes");
    println!("200 device changes in {burst:?}: {events} devices events");
    server.abort();
    d.op.stop().await;
}
