//! How long the serve loop waits before it tries to lead again after a
//! failed attempt: doubling from `first` up to `max`, back to `first` once an
//! attempt has led for `healthy_after` (so a one-off NATS hiccup costs
//! little, and a persistent fault does not spin).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    healthy_after: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration, healthy_after: Duration) -> Self {
        Self { first, max, healthy_after, next: first }
    }

    /// The wait after an attempt that ended having led for `led_for`.
    pub fn after(&mut self, led_for: Duration) -> Duration {
        if led_for >= self.healthy_after {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_after_a_healthy_run() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(Duration::from_millis(500), s(30), s(60));
        let quick = Duration::from_millis(5);
        let waits: Vec<u128> = (0..9).map(|_| b.after(quick).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.after(s(61)), Duration::from_millis(500), "led for a minute: a fresh fault");
        assert_eq!(b.after(quick), s(1));
    }
}
