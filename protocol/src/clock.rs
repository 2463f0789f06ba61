//! Time as an effect, shared by agent and operator. Decision code takes
//! `now` as an argument; only the loops that feed it ask a [`Clock`], and
//! tests give them a [`FakeClock`].
//!
//! Two readings, because they answer different questions:
//! - [`Clock::now`], the wall clock: what the operator's timestamps
//!   (`not_before`, `expires_at`) are compared with. NTP, `date -s` and an
//!   RTC-less Pi that boots in 1970 or in last week's time all move it.
//! - [`Clock::boottime`], time since this kernel booted including suspend
//!   (`CLOCK_BOOTTIME`): nothing steps it, so durations that must hold
//!   (the commit deadline) are measured on it. It restarts at zero on every
//!   boot, so a reading only means something together with the boot id.

use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the kernel booted, suspend included. Comparable only
/// within one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct BootMillis(pub u64);

impl BootMillis {
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
    pub fn saturating_since(self, earlier: BootMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> UnixMillis;
    /// Time since boot, suspend included; never stepped.
    fn boottime(&self) -> BootMillis;
}

/// The system's real-time clock and `CLOCK_BOOTTIME`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        UnixMillis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn boottime(&self) -> BootMillis {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let ms = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
        BootMillis(secs.saturating_mul(1000).saturating_add(ms))
    }
}

/// A clock tests move by hand (clones share the same time). The wall clock
/// and boottime are independent, so a test can step the wall clock alone,
/// as NTP does.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    wall: Arc<AtomicU64>,
    boot: Arc<AtomicU64>,
}

impl FakeClock {
    /// Wall clock at `start`, boottime at zero.
    pub fn new(start: UnixMillis) -> Self {
        Self { wall: Arc::new(AtomicU64::new(start.0)), boot: Arc::new(AtomicU64::new(0)) }
    }
    /// Time passes: both clocks move.
    pub fn advance_ms(&self, ms: u64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.boot.fetch_add(ms, Ordering::SeqCst);
    }
    /// The wall clock is set (NTP step, `date -s`); boottime does not move.
    pub fn set_wall(&self, to: UnixMillis) {
        self.wall.store(to.0, Ordering::SeqCst);
    }
    /// A new boot: boottime starts again from `at`.
    pub fn set_boottime(&self, at: BootMillis) {
        self.boot.store(at.0, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.wall.load(Ordering::SeqCst))
    }
    fn boottime(&self) -> BootMillis {
        BootMillis(self.boot.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told_and_clones_share_it() {
        let a = FakeClock::new(UnixMillis(10));
        let b = a.clone();
        a.advance_ms(5);
        assert_eq!(b.now(), UnixMillis(15));
        assert_eq!(b.boottime(), BootMillis(5));
        a.set_wall(UnixMillis(1));
        assert_eq!((b.now(), b.boottime()), (UnixMillis(1), BootMillis(5)), "a wall step leaves boottime alone");
        assert!(SystemClock.now() > UnixMillis(1_700_000_000_000));
    }

    #[test]
    fn system_boottime_moves_forward_and_is_at_least_the_monotonic_clock() {
        let a = SystemClock.boottime();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = SystemClock.boottime();
        assert!(b.saturating_since(a) >= 20, "{a:?} -> {b:?}");
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        assert!(
            b.0 / 1000 + 1 >= u64::try_from(mono.tv_sec).unwrap_or(0),
            "boottime includes everything monotonic counts"
        );
    }
}
