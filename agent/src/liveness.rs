//! Proof of life from the agent's loops, read by the watchdog feeder: systemd
//! is pinged only while every watched loop keeps making progress, so a
//! wedged loop gets the agent restarted instead of silently doing nothing.
//!
//! Watched (runner.rs): the heartbeat loop (beats once per interval) and,
//! when RAUC answered at start, the upgrade service loop (beats every
//! second, `upgrade::service::LIVENESS_TICK`; it owns the commit deadline
//! of a trial slot). Not watched: the command server and the offer watch
//! (a stuck one shows as unanswered commands / no new offers, which the
//! operator times out), and the helper tasks doing long work (download,
//! install, health checks, Mark): they run beside the loop, so a big
//! download or a slow install never starves the watchdog. The download has
//! its stall timeout and the checks theirs; a RAUC install is waited on for
//! as long as RAUC runs it.

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
