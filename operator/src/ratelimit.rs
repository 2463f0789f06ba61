//! Per-key rate limit for warnings about what devices send, so one device
//! sending garbage in a loop cannot flood the operator's log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    /// Per key: when it was last let through, and how many were held back since.
    last: HashMap<String, (Instant, u64)>,
}

impl WarnLimiter {
    pub fn new(every: Duration) -> Self {
        Self { every, last: HashMap::new() }
    }

    /// `Some(n)`: log now, `n` warnings for this key were suppressed since
    /// the last one. `None`: suppress this one.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, held)) if now.saturating_duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                // Bound the memory: forget keys quiet for longer than the period.
                if self.last.len() >= 10_000 {
                    let every = self.every;
                    self.last.retain(|_, (at, _)| now.saturating_duration_since(*at) < every);
                }
                self.last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_key_and_period_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut l = WarnLimiter::new(Duration::from_secs(60));
        assert_eq!(l.allow("pi-1", t0), Some(0));
        assert_eq!(l.allow("pi-1", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow("pi-1", t0 + Duration::from_secs(59)), None);
        assert_eq!(l.allow("pi-2", t0 + Duration::from_secs(2)), Some(0), "keys are independent");
        assert_eq!(l.allow("pi-1", t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.allow("pi-1", t0 + Duration::from_secs(61)), None);
    }
}
