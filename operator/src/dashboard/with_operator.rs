//! `serve --http`: the operator loop and the dashboard in one process, over
//! one shutdown signal. The dashboard reads the fleet through a live
//! `KvFleet` (its own KV watches), so it serves the same on a standby as on
//! the leader.

use crate::bus::{connect, Buckets};
use crate::config::Config;
use crate::error::Result;
use crate::fleet::KvFleet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs the operator and the dashboard on `listen` until `shutdown`
/// resolves, or until either of them fails (then the other stops too).
pub async fn run_with_dashboard(
    cfg: Config,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let buckets = Buckets::open(connect(&cfg.nats).await?).await?;
    let fleet = Arc::new(KvFleet::live(buckets, cfg.fleet.clone()).await?.with_enroll(&cfg));
    let (stop, rx) = watch::channel(false);
    let operator = async {
        let r = crate::run(cfg.clone(), stopped(rx.clone())).await;
        stop.send_replace(true);
        r
    };
    let dashboard = async {
        let r = super::serve(fleet, &cfg, listen, stopped(rx.clone())).await;
        if let Err(e) = &r {
            log::error!("dashboard: {e}; stopping the operator");
        }
        stop.send_replace(true);
        r
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => { stop.send_replace(true); }
            _ = stopped(rx.clone()) => {}
        }
    };
    let (operator, dashboard, ()) = tokio::join!(operator, dashboard, signal);
    operator.and(dashboard)
}
