//! `serve --http` on a standby: a second operator process (here a task)
//! with the dashboard, while another operator leads. Everything over a real
//! socket: log in, read the rollout page, pause it; the leader applies the
//! pause; shutting down stops the standby's operator and dashboard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dashboard_support;

use common::sim::Behavior;
use common::{eventually, Env, Operator};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange on a fresh connection; the whole response as text.
async fn http(addr: &str, request: String) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let start = text.find(before).unwrap() + before.len();
    let end = start + text[start..].find(after).unwrap();
    &text[start..end]
}

#[tokio::test]
async fn the_dashboard_of_a_standby_operator_controls_the_leaders_rollout() {
    let env = Env::start().await;
    let leader = Operator::start(&env.cfg);
    env.devices(&["s1", "s2"], Behavior::Manual).await;
    env.rollout(&env.start_args(&["s1", "s2"])).await;
    env.operator_caught_up().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut cfg = env.cfg.clone();
    cfg.coordinator.operator_id = Some("standby".into());
    cfg.dashboard = dashboard_support::dashboard_config();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listen = addr.clone();
    let standby = tokio::spawn(async move {
        harmony_operator::dashboard::run_with_dashboard(cfg, &listen, async move {
            let _ = stopped.await;
        })
        .await
    });
    eventually(15, "the standby's dashboard listening", || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await;

    let body = "username=alice&password=alice-password";
    let res = http(
        &addr,
        format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 303"), "{res}");
    let cookie = between(&res.to_ascii_lowercase(), "set-cookie: ", ";").to_string();
    let page = http(
        &addr,
        format!("GET /rollouts/r1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(r#"data-status="running""#), "{page}");
    let csrf = between(&page, r#"name="csrf-token" content=""#, "\"").to_string();

    let res = http(
        &addr,
        format!(
            "POST /rollouts/r1/pause HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\
             X-CSRF-Token: {csrf}\r\nHX-Request: true\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    eventually(20, "the leader paused r1", || async { env.rollout_state("r1").await.status.name() == "paused" }).await;
    // The standby never led.
    let status = harmony_operator::leader_status::query(&env.buckets.client, Duration::from_secs(2)).await.unwrap();
    assert_ne!(status.operator_id, "standby");

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), standby).await.expect("standby did not stop");
    ended.unwrap().unwrap();
    leader.stop().await;
}
