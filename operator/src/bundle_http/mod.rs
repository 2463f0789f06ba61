//! Bundles over HTTP with Range (issue #16): `serve` answers
//! `GET`/`HEAD /v1/bundles/{id}` when `[bundle_http]` is configured, so a
//! device's RAUC can stream a bundle instead of downloading it whole.
//!
//! Each request carries the bearer token from the device's signed offer
//! ([`token`]); the bytes come from a SHA-256-verified local copy of the
//! object ([`cache`]); at most `--max-concurrent-downloads` devices of a
//! rollout transfer at once ([`admission`]). With `tls_cert`/`tls_key` it
//! speaks HTTPS and offers HTTP/2 first ([`tls`]); without, plain HTTP/1.1
//! (and HTTP/2 only to a client that starts with its preface).

pub mod admission;
pub mod cache;
mod handler;
pub mod offer;
pub mod pace;
pub mod range;
pub mod tls;
pub mod token;

use crate::bus::Buckets;
use crate::clock::Clock;
use crate::config::BundleHttpConfig;
use crate::error::{Error, Result};
use admission::{Admissions, Verdict};
use ed25519_dalek::VerifyingKey;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the request handlers share.
#[derive(Debug)]
struct Server {
    token_key: VerifyingKey,
    cache: cache::Cache,
    admissions: Mutex<Admissions>,
    /// Per-device caps devices asked for (`pace::HEADER`).
    pacer: Mutex<pace::Pacer>,
    /// Requests transferring bytes now (for logs and tests).
    open: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
}

impl Server {
    fn admit(&self, rollout: &str, device: &str, limit: Option<u32>) -> Verdict {
        let mut a = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = a.admit(rollout, device, limit, self.clock.now());
        self.open.send_replace(a.open_transfers());
        verdict
    }

    /// When `bytes` for `device`, capped at `rate`, may be sent.
    fn pace(&self, device: &str, bytes: u64, rate: u64) -> std::time::Instant {
        let mut p = self.pacer.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        p.prune(now);
        p.reserve(device, bytes, rate, now)
    }

    fn release(&self, rollout: &str, device: &str) {
        let mut a = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
        a.release(rollout, device, self.clock.now());
        self.open.send_replace(a.open_transfers());
    }
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    server: Arc<Server>,
    open: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The address it listens on (the real port when `listen` said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many admitted transfers are sending bytes now.
    pub fn open_transfers(&self) -> watch::Receiver<u64> {
        self.open.clone()
    }

    /// How many bundles were fetched from the object store into the cache.
    pub fn bundles_fetched(&self) -> u64 {
        self.server.cache.fetched()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `cfg.listen` and serves until the handle is dropped.
pub async fn start(
    cfg: &BundleHttpConfig,
    token_key: VerifyingKey,
    buckets: &Buckets,
    clock: Arc<dyn Clock>,
) -> Result<Handle> {
    let addr: SocketAddr =
        cfg.listen.parse().map_err(|e| Error::Invalid(format!("bundle_http.listen {:?}: {e}", cfg.listen)))?;
    let (open_tx, open) = watch::channel(0);
    let server = Arc::new(Server {
        token_key,
        cache: cache::Cache::new(cfg.cache_dir.clone(), buckets.clone()),
        admissions: Mutex::new(Admissions::new(cfg.download_idle_secs * 1000)),
        pacer: Mutex::new(pace::Pacer::default()),
        open: open_tx,
        clock,
    });
    let router =
        axum::Router::new().route("/v1/bundles/{id}", axum::routing::get(handler::bundle)).with_state(server.clone());
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(format!("bundle_http {addr}"), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io(format!("bundle_http {addr}"), e))?;
    let task = match cfg.tls() {
        Some((cert, key)) => {
            let listener = tls::TlsListener::new(listener, tls::server_config(cert, key, cfg.http2)?)?;
            let alpn = if cfg.http2 { "h2, http/1.1" } else { "http/1.1 only" };
            log::info!("serving bundles on https://{addr}/v1/bundles/ ({alpn}; offers name {})", cfg.public_url);
            spawn_serve(listener, router)
        }
        None => {
            log::info!("serving bundles on http://{addr}/v1/bundles/ (offers name {})", cfg.public_url);
            spawn_serve(listener, router)
        }
    };
    Ok(Handle { addr, server, open, task })
}

/// Serves `router` on `listener` (TCP or TLS) until the task is aborted.
fn spawn_serve<L>(listener: L, router: axum::Router) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            log::error!("bundle server: {e}");
        }
    })
}
