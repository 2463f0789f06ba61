//! The agent's log lines, captured in the test process so a test can wait
//! for one as a definite event ("the heartbeat write failed", "the download
//! was retried while the server was away") instead of sleeping. nextest runs
//! every test in its own process, so the lines are that test's; patterns are
//! specific anyway. Lines are echoed to stderr, as the agent's logger would.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

static LINES: Mutex<Vec<(Instant, String)>> = Mutex::new(Vec::new());

struct Capture;

static CAPTURE: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!("{:<5} {}: {}", r.level(), r.target(), r.args());
        eprintln!("{line}");
        LINES.lock().unwrap().push((Instant::now(), line));
    }
    fn flush(&self) {}
}

/// Install the capture (once per process; later calls do nothing).
pub fn init() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// How many lines were captured so far: pass it to [`wait_line`] to look
/// only at what comes after this point.
pub fn mark() -> usize {
    LINES.lock().unwrap().len()
}

/// The first line after `from` that contains every one of `parts`, with
/// when it was logged; panics (showing the log) after `within`.
pub async fn wait_line(from: usize, within: Duration, parts: &[&str]) -> (Instant, String) {
    let deadline = Instant::now() + within;
    loop {
        {
            let lines = LINES.lock().unwrap();
            if let Some(hit) = lines.iter().skip(from).find(|(_, l)| parts.iter().all(|p| l.contains(p))) {
                return hit.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} within {within:?}; captured:\n{}",
                lines.iter().skip(from).map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
