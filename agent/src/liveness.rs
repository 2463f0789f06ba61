//! Proof of life from the agent's loops, read by the watchdog feeder
//! (`runner.rs`, `Supervisor`): systemd is pinged only while every watched
//! loop has beaten within `3 × heartbeat interval + 5 s`, so a wedged loop
//! gets the agent restarted instead of silently doing nothing. The silent
//! loop is named in the log and in the systemd status line.
//!
//! Watched, exactly these two:
//! - the heartbeat loop: beats once per heartbeat interval, before each
//!   write attempt (a write is bounded at 5 s, so a NATS outage does not
//!   silence it; only a loop stuck elsewhere does);
//! - the upgrade service loop, only when RAUC answered at start (without
//!   RAUC the loop does not exist): beats every second from its own select
//!   arm (`upgrade::service::LIVENESS_TICK`), so it goes silent only when
//!   one step of it blocks (a hung record write, a blocking call). It owns a
//!   trial slot's commit deadline, which is why it must not be wedged while
//!   the watchdog is fed.
//!
//! Not watched: the workload service (one pass may rightly take minutes, an
//! image pull say; each of its actions is bounded by `action_timeout_secs`,
//! and a stuck one shows as a resource that stays `reconciling`), the
//! command server and the offer watch (a stuck one shows
//! as unanswered commands / no new offers, which the operator times out),
//! the health monitor, and the helper tasks doing long work (download,
//! install, health checks, Mark): they run beside the upgrade loop, so a
//! big download or a slow install never starves the watchdog. The download
//! has its stall timeout and the checks theirs; a RAUC install is waited on
//! for as long as RAUC runs it.
//!
//! Test: `agent/tests/upgrade_faults_watchdog.rs` wedges only the upgrade
//! loop and checks that the pings stop while heartbeats go on.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Liveness {
    name: &'static str,
    last: Mutex<Instant>,
}

impl Liveness {
    pub fn new(name: &'static str) -> Self {
        Self { name, last: Mutex::new(Instant::now()) }
    }

    pub fn beat(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn silent_for(&self) -> Duration {
        self.last.lock().map(|l| l.elapsed()).unwrap_or(Duration::MAX)
    }
}
