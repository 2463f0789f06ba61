//! Login throttling: after a few wrong passwords for one user name, further
//! attempts for that name wait out a delay that doubles with each failure
//! (capped), so guessing a password online takes years, not hours.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FREE_ATTEMPTS: u32 = 5;
const MAX_DELAY: Duration = Duration::from_secs(300);
/// Bound on remembered names: beyond it the oldest quiet entries go.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

fn delay(failures: u32) -> Duration {
    if failures < FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_ATTEMPTS).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_DELAY)
}

impl LoginThrottle {
    /// `Err(seconds to wait)` when this name must not try now.
    pub fn check(&self, name: &str) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some((n, last)) => {
                let wait = delay(*n).saturating_sub(last.elapsed());
                if wait.is_zero() {
                    Ok(())
                } else {
                    Err(wait.as_secs().max(1))
                }
            }
            None => Ok(()),
        }
    }

    pub fn failed(&self, name: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(name) {
            map.retain(|_, (_, last)| last.elapsed() < MAX_DELAY);
        }
        let entry = map.entry(name.to_string()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    pub fn succeeded(&self, name: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_are_free_the_sixth_waits() {
        let t = LoginThrottle::default();
        for _ in 0..4 {
            t.failed("a");
        }
        assert!(t.check("a").is_ok());
        t.failed("a");
        assert!(t.check("a").is_err());
        assert!(t.check("b").is_ok());
        t.succeeded("a");
        assert!(t.check("a").is_ok());
        assert_eq!(delay(30), MAX_DELAY);
    }
}
