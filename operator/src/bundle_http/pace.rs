//! A device's bandwidth cap in streaming mode. The agent's
//! `upgrade.download_max_bytes_per_sec` caps its own downloads; when RAUC
//! streams, the agent cannot pace RAUC's reads, so it asks the server to
//! (the `Harmony-Max-Bytes-Per-Sec` request header, sent with the token).
//! The cap is per device, over all its open requests: RAUC reads a bundle
//! as many short Range requests, and a per-request cap would let parallel
//! ones add up. Pure: times are passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The request header a device names its cap in (bytes per second).
pub const HEADER: &str = "harmony-max-bytes-per-sec";

/// Caps below this are refused as a typo (a cap of 1 byte/s would hold a
/// connection open for days).
pub const MIN_BYTES_PER_SEC: u64 = 4096;

/// How much unused allowance a device keeps (a token bucket one second
/// deep): a reader that pauses (RAUC hashing or writing between reads)
/// catches up that much at full speed, so its average reaches the cap, and
/// over any window of W seconds it gets at most (W + 1) s worth: within 5 %
/// of the cap from a 20 s window on.
const BURST: Duration = Duration::from_secs(1);

/// When each capped device may send its next bytes.
#[derive(Debug, Default)]
pub struct Pacer {
    next: HashMap<String, Instant>,
}

impl Pacer {
    /// Books `bytes` for `device` at `rate` bytes/s; returns when they may
    /// be sent (`now` or later).
    pub fn reserve(&mut self, device: &str, bytes: u64, rate: u64, now: Instant) -> Instant {
        let rate = rate.max(1);
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = self.next.get(device).copied().map_or(earliest, |n| n.max(earliest));
        let cost = Duration::from_nanos(
            u64::try_from(u128::from(bytes) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
        );
        let next = start + cost;
        self.next.insert(device.to_string(), next);
        // The bytes may go once the schedule, less this chunk, is reached.
        start.max(now)
    }

    /// Forgets devices whose schedule is long past (bounded memory).
    pub fn prune(&mut self, now: Instant) {
        self.next.retain(|_, next| *next + Duration::from_secs(60) > now);
    }
}

/// The cap a request asks for: `None` without the header; `Err` for a
/// value that is not a number of at least [`MIN_BYTES_PER_SEC`].
pub fn requested(value: Option<&str>) -> Result<Option<u64>, String> {
    let Some(v) = value else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) if n >= MIN_BYTES_PER_SEC => Ok(Some(n)),
        _ => {
            Err(format!("{HEADER}: {v:?} is not a rate of at least {MIN_BYTES_PER_SEC} bytes per second (0 = no cap)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_sends_at_its_rate_over_all_its_requests() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        // 1 MiB/s, 64 KiB chunks: 16 chunks a second, across two requests.
        let mut last = t0;
        for i in 0..32u64 {
            last = p.reserve("pi-1", 65536, 1 << 20, t0);
            assert!(last >= t0, "{i}");
        }
        // 32 chunks = 2 MiB = 2 s at the cap, less the 1 s burst: the last
        // chunk is booked from 0.9375 s on (31 chunks before it).
        let waited = last - t0;
        assert!(waited >= Duration::from_millis(900) && waited <= Duration::from_millis(1000), "{waited:?}");
        // Another device is not held up by pi-1.
        assert_eq!(p.reserve("pi-2", 65536, 1 << 20, t0), t0);
    }

    #[test]
    fn after_an_idle_spell_one_second_of_allowance_is_kept_no_more() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.reserve("pi-1", 1 << 20, 1 << 20, t0);
        let later = t0 + Duration::from_secs(10);
        // Ten idle seconds leave one second of allowance: this chunk and
        // one more second's worth go at once...
        assert_eq!(p.reserve("pi-1", 1 << 20, 1 << 20, later), later);
        assert_eq!(p.reserve("pi-1", 1 << 20, 1 << 20, later), later);
        // ...then the rate holds.
        let next = p.reserve("pi-1", 1 << 20, 1 << 20, later);
        assert!(next >= later + Duration::from_millis(999), "{:?}", next - later);
        p.prune(later + Duration::from_secs(120));
        assert!(p.next.is_empty());
    }

    #[test]
    fn the_header_is_a_rate_or_a_clear_refusal() {
        assert_eq!(requested(None), Ok(None));
        assert_eq!(requested(Some("0")), Ok(None));
        assert_eq!(requested(Some(" 1048576 ")), Ok(Some(1 << 20)));
        for bad in ["1", "fast", "-5", "1e6"] {
            assert!(requested(Some(bad)).unwrap_err().contains(HEADER), "{bad}");
        }
    }
}
