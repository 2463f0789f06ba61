//! `--max-concurrent-downloads`: at most N devices of a rollout download at
//! once. Pure: the time is passed in.
//!
//! A slot belongs to a *device*, not to a request: a streaming client (RAUC
//! over NBD) reads a bundle as a long series of short Range requests, and a
//! device that lost its slot between two of them would fail its install
//! half-way. So a device keeps its slot while any of its requests is open
//! and for `linger` after the last one ended; only then can another device
//! take it.

use harmony_protocol::time::UnixMillis;
use std::collections::HashMap;

/// Whether a download may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Every slot of the rollout is held: try again after this many seconds.
    Busy {
        retry_after_secs: u64,
    },
}

/// When no slot will free itself at a known time (all holders are
/// transferring), clients are told to come back after this long.
const DEFAULT_RETRY_SECS: u64 = 5;

#[derive(Debug, Clone, Copy)]
struct Holder {
    open: u32,
    last_end: UnixMillis,
}

#[derive(Debug, Default)]
pub struct Admissions {
    linger_ms: u64,
    /// Holders by rollout (a token without a rollout shares the "" pool).
    pools: HashMap<String, HashMap<String, Holder>>,
}

impl Admissions {
    pub fn new(linger_ms: u64) -> Self {
        Self { linger_ms, pools: HashMap::new() }
    }

    /// A request of `device` in `rollout` (whose limit is `limit`) wants to
    /// transfer. On `Admitted` the caller must [`Self::release`] it later.
    pub fn admit(&mut self, rollout: &str, device: &str, limit: Option<u32>, now: UnixMillis) -> Verdict {
        let linger = self.linger_ms;
        let pool = self.pools.entry(rollout.to_string()).or_default();
        prune(pool, linger, now);
        if let Some(h) = pool.get_mut(device) {
            h.open += 1;
            return Verdict::Admitted;
        }
        if let Some(limit) = limit {
            if pool.len() >= limit.max(1) as usize {
                // The soonest an idle holder's slot frees, if any is idle.
                let soonest = pool
                    .values()
                    .filter(|h| h.open == 0)
                    .map(|h| h.last_end.0.saturating_add(linger).saturating_sub(now.0))
                    .min();
                let retry_after_secs = soonest.map_or(DEFAULT_RETRY_SECS, |ms| ms.div_ceil(1000).max(1));
                return Verdict::Busy { retry_after_secs };
            }
        }
        pool.insert(device.to_string(), Holder { open: 1, last_end: now });
        Verdict::Admitted
    }

    /// One admitted request of `device` ended (finished, failed or the
    /// client went away).
    pub fn release(&mut self, rollout: &str, device: &str, now: UnixMillis) {
        let Some(pool) = self.pools.get_mut(rollout) else { return };
        if let Some(h) = pool.get_mut(device) {
            h.open = h.open.saturating_sub(1);
            h.last_end = now;
        }
        // Also drops other devices whose slot ran out, so a rollout nobody
        // asks for again does not keep them.
        prune(pool, self.linger_ms, now);
        if pool.is_empty() {
            self.pools.remove(rollout);
        }
    }

    /// Requests transferring now, over all rollouts.
    pub fn open_transfers(&self) -> u64 {
        self.pools.values().flat_map(|p| p.values()).map(|h| u64::from(h.open)).sum()
    }
}

/// Forgets holders with nothing open whose linger has passed.
fn prune(pool: &mut HashMap<String, Holder>, linger_ms: u64, now: UnixMillis) {
    pool.retain(|_, h| h.open > 0 || now.0 < h.last_end.0.saturating_add(linger_ms));
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    fn t(ms: u64) -> UnixMillis {
        UnixMillis(ms)
    }

    #[test]
    fn a_full_rollout_refuses_new_devices_until_a_slot_frees() {
        let mut a = Admissions::new(10_000);
        let limit = Some(2);
        assert_eq!(a.admit("r", "d1", limit, t(0)), Admitted);
        assert_eq!(a.admit("r", "d2", limit, t(0)), Admitted);
        assert_eq!(a.admit("r", "d3", limit, t(0)), Busy { retry_after_secs: DEFAULT_RETRY_SECS });
        // A holder's next request (a streaming client's next range) is admitted.
        assert_eq!(a.admit("r", "d1", limit, t(1)), Admitted);
        assert_eq!(a.open_transfers(), 3);
        // Another rollout has its own slots; no limit admits everyone.
        assert_eq!(a.admit("other", "d3", Some(1), t(1)), Admitted);
        assert_eq!(a.admit("free", "d4", None, t(1)), Admitted);
        // d1 ends both requests at 2 s: its slot lingers until 12 s.
        a.release("r", "d1", t(2_000));
        a.release("r", "d1", t(2_000));
        assert_eq!(a.admit("r", "d3", limit, t(2_500)), Busy { retry_after_secs: 10 });
        assert_eq!(a.admit("r", "d3", limit, t(11_001)), Busy { retry_after_secs: 1 });
        // d1 comes back within the linger: still its slot.
        assert_eq!(a.admit("r", "d1", limit, t(11_500)), Admitted);
        a.release("r", "d1", t(11_600));
        assert_eq!(a.admit("r", "d3", limit, t(21_600)), Admitted, "d1's slot expired");
        assert_eq!(a.admit("r", "d1", limit, t(21_600)), Busy { retry_after_secs: DEFAULT_RETRY_SECS });
    }

    #[test]
    fn without_linger_a_slot_frees_when_the_transfer_ends() {
        let mut a = Admissions::new(0);
        assert_eq!(a.admit("r", "d1", Some(1), t(0)), Admitted);
        assert_eq!(a.admit("r", "d2", Some(1), t(0)), Busy { retry_after_secs: DEFAULT_RETRY_SECS });
        a.release("r", "d1", t(0));
        assert_eq!(a.open_transfers(), 0);
        assert_eq!(a.admit("r", "d2", Some(1), t(0)), Admitted);
        // Releasing what was never admitted changes nothing.
        a.release("r", "nobody", t(0));
        a.release("nope", "d2", t(0));
        assert_eq!(a.open_transfers(), 1);
    }

    #[test]
    fn a_limit_of_zero_still_admits_one() {
        let mut a = Admissions::new(0);
        assert_eq!(a.admit("r", "d1", Some(0), t(0)), Admitted);
        assert!(matches!(a.admit("r", "d2", Some(0), t(0)), Busy { .. }));
    }
}
