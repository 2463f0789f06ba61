#![allow(clippy::unwrap_used, clippy::expect_used)] // integration-test code: failing loudly is the point
//! The watchdog is fed only while the upgrade service's loop turns, not just
//! the heartbeat loop: on a trial slot that loop owns the commit deadline, so
//! a wedged one must get the agent restarted by systemd.
//!
//! The wedge is a blocking call inside the loop: a clock whose `boottime()`
//! (read only by the upgrade service, on its clock check) blocks once armed.
//! It blocks through `block_in_place`, which hands the rest of the runtime to
//! another thread. Without that, the blocked worker can also hold up tasks
//! queued behind the service on the same worker (the supervisor among them),
//! and the pings would stop whatever the supervisor watches — a test that
//! could not tell the wirings apart.

mod upgrade_common;

use harmony_agent::clock::{BootMillis, Clock, SystemClock};
use harmony_agent::service_manager::{Notification, RecordingServiceManager};
use harmony_protocol::time::UnixMillis;
use harmony_testkit::wait::wait_until;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use upgrade_common::*;

/// The real clock, except that once armed `boottime()` blocks until released.
#[derive(Debug, Default)]
struct WedgingClock {
    armed: AtomicBool,
    /// Wall time at which a caller first blocked.
    wedged_at: Mutex<Option<UnixMillis>>,
    released: Mutex<bool>,
    release: Condvar,
}

impl WedgingClock {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
    fn wedged_at(&self) -> Option<UnixMillis> {
        *self.wedged_at.lock().unwrap()
    }
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.release.notify_all();
    }
}

impl Clock for WedgingClock {
    fn now(&self) -> UnixMillis {
        SystemClock.now()
    }
    fn boottime(&self) -> BootMillis {
        if self.armed.load(Ordering::SeqCst) {
            self.wedged_at.lock().unwrap().get_or_insert_with(|| SystemClock.now());
            tokio::task::block_in_place(|| {
                let mut released = self.released.lock().unwrap();
                while !*released {
                    released = self.release.wait(released).unwrap();
                }
            });
        }
        SystemClock.boottime()
    }
}

/// Releases the wedge when dropped, also when an assertion fails: the
/// runtime cannot shut down while a thread blocks in `block_in_place`.
struct Unwedge(Arc<WedgingClock>);

impl Drop for Unwedge {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn pings(log: &[Notification]) -> usize {
    log.iter().filter(|n| **n == Notification::Watchdog).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_upgrade_service_stops_the_watchdog_pings_while_heartbeats_go_on() {
    let mut rig = Rig::start().await;
    // The service reads boottime on every clock check: check often, so the
    // wedge comes right after arming.
    rig.extra_upgrade_config = "clock_check_interval_ms = 100".into();
    let clock = Arc::new(WedgingClock::default());
    let _unwedge = Unwedge(clock.clone());
    // 400 ms watchdog: a ping every 200 ms while everything turns.
    let sm = Arc::new(RecordingServiceManager::with_watchdog(Duration::from_millis(400)));
    let agent = rig.start_agent_with(300, clock.clone(), sm.clone());
    rig.wait_phase(Duration::from_secs(20), "idle").await;
    // The supervisor's limit with a 1 s heartbeat interval: 3 × 1 s + 5 s.
    let max_silence_ms = 8_000;

    wait_until(Duration::from_secs(5), "regular pings before the wedge", || pings(&sm.notifications()) >= 3).await;

    clock.arm();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wedged_at = loop {
        if let Some(at) = clock.wedged_at() {
            break at;
        }
        assert!(tokio::time::Instant::now() < deadline, "the upgrade service never read boottime");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Definite points: heartbeats (the heartbeat loop keeps going) stamped
    // past the wedge + the limit + a margin for the supervisor's tick.
    let stamped_after = |ms: u64| move |hb: &harmony_protocol::Heartbeat| hb.sent_at.0 >= wedged_at.0 + ms;
    rig.wait_heartbeat(Duration::from_secs(20), stamped_after(max_silence_ms + 1_500)).await;
    let quiet_from = sm.notifications().len();
    rig.wait_heartbeat(Duration::from_secs(10), stamped_after(max_silence_ms + 4_500)).await;
    let log = sm.notifications();

    clock.release();
    agent.stop().await;

    assert_eq!(pings(&log[quiet_from..]), 0, "pings went on for 3 s with the upgrade loop wedged: {log:?}");
    assert!(
        log.iter().any(|n| matches!(n, Notification::Status(s) if s.starts_with("upgrade service loop silent"))),
        "the status names the wedged loop: {log:?}"
    );
}
