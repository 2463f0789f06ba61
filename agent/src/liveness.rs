//! Proof of life from the agent's loops, read by the watchdog feeder: systemd
//! is pinged only while every loop keeps making progress, so a wedged loop
//! gets the agent restarted instead of silently doing nothing.

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
