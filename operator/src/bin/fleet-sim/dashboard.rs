//! The dashboard benchmark's client side: log in as a real browser would,
//! time page requests, and hold server-sent-event viewers open.
//!
//! Times are whole requests at the client over loopback (connect, request,
//! full response): an upper bound of the server's time.

use crate::http;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone)]
pub struct Dash {
    pub port: u16,
    cookie: String,
}

/// Logs in (waiting up to `patience` for the dashboard to listen).
pub async fn login(port: u16, user: &str, password: &str, patience: Duration) -> Res<Dash> {
    let deadline = Instant::now() + patience;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("the dashboard did not listen on port {port} within {patience:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http::post_form(port, "/login", "", &[("username", user), ("password", password)]).await?;
    let cookie = r.cookies().join("; ");
    if cookie.is_empty() {
        return Err(format!("login refused: HTTP {} {}", r.status, String::from_utf8_lossy(&r.body)).into());
    }
    let dash = Dash { port, cookie };
    dash.time("/").await?;
    Ok(dash)
}

impl Dash {
    /// One GET; an error unless it answers 200.
    pub async fn time(&self, path: &str) -> Res<Duration> {
        let t = Instant::now();
        let r = http::get(self.port, path, &self.cookie).await?;
        let took = t.elapsed();
        if r.status != 200 {
            return Err(format!("GET {path}: HTTP {}", r.status).into());
        }
        Ok(took)
    }

    /// Every path in turn, `rounds` times.
    pub async fn time_all(&self, paths: &[String], rounds: usize) -> Res<Vec<Duration>> {
        let mut out = Vec::with_capacity(paths.len() * rounds);
        for _ in 0..rounds {
            for p in paths {
                out.push(self.time(p).await?);
            }
        }
        Ok(out)
    }

    /// `n` viewers on the live-update stream, each with its own connection.
    pub fn viewers(&self, n: usize) -> Viewers {
        let events = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (me, events, bytes, failures) = (self.clone(), events.clone(), bytes.clone(), failures.clone());
                tokio::spawn(async move {
                    let counted = http::sse(me.port, "/events", &me.cookie, |len| {
                        events.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(len as u64, Ordering::Relaxed);
                    })
                    .await;
                    if counted.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Viewers { tasks, events, bytes, failures }
    }
}

#[derive(Debug)]
pub struct Viewers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub events: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
}

impl Drop for Viewers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The device-list requests timed: first, middle and last page, a search,
/// a label filter, filters combined, each sort.
pub fn device_pages(devices: usize) -> Vec<String> {
    let last = devices.saturating_sub(50);
    vec![
        "/devices".into(),
        format!("/devices?offset={}", devices / 2),
        format!("/devices?offset={last}"),
        "/devices?q=sim-0421".into(),
        "/devices?label=site%3Dsite-3".into(),
        "/devices?presence=online&version=1.0&health=healthy".into(),
        "/devices?sort=last_seen".into(),
        "/devices?sort=version&offset=1000".into(),
        "/devices?sort=phase".into(),
        "/".into(),
    ]
}
