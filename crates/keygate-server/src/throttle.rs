//! Sign-in throttling: failures are counted per username and per client address in a
//! window; past a threshold each failure is answered more slowly, and past the limit the
//! sign-in answers 429 with `Retry-After` until the window ends.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub window: Duration,
    pub max_failures_per_user: u32,
    pub max_failures_per_address: u32,
    /// Failures answered at full speed before each further one is delayed.
    pub free_failures: u32,
    pub delay_step: Duration,
    pub delay_max: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            max_failures_per_user: 10,
            max_failures_per_address: 50,
            free_failures: 3,
            delay_step: Duration::from_millis(250),
            delay_max: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    windows: Mutex<HashMap<String, Window>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(username: &str, address: &str) -> [(String, bool); 2] {
        [
            (format!("u:{}", username.to_lowercase()), true),
            (format!("a:{address}"), false),
        ]
    }

    /// `Err(retry_after)` when either the username or the address is locked out.
    pub fn check(&self, username: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait = Duration::ZERO;
        for (key, per_user) in Self::keys(username, address) {
            let limit = if per_user {
                self.config.max_failures_per_user
            } else {
                self.config.max_failures_per_address
            };
            if let Some(w) = windows.get(&key) {
                let age = now.saturating_duration_since(w.started);
                if age < self.config.window && w.failures >= limit {
                    wait = wait.max(self.config.window - age);
                }
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Counts a failure; returns how long to hold the answer back.
    pub fn failure(&self, username: &str, address: &str, now: Instant) -> Duration {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > SWEEP_AT {
            let window = self.config.window;
            windows.retain(|_, w| now.saturating_duration_since(w.started) < window);
        }
        let mut worst = 0;
        for (key, _) in Self::keys(username, address) {
            let entry = windows.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.saturating_duration_since(entry.started) >= self.config.window {
                *entry = Window {
                    started: now,
                    failures: 0,
                };
            }
            entry.failures += 1;
            worst = worst.max(entry.failures);
        }
        let over = worst.saturating_sub(self.config.free_failures);
        (self.config.delay_step * over).min(self.config.delay_max)
    }

    /// A successful sign-in clears the username's failures (not the address's).
    pub fn success(&self, username: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.remove(&format!("u:{}", username.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_then_recovers() {
        let config = ThrottleConfig {
            window: Duration::from_secs(60),
            max_failures_per_user: 3,
            max_failures_per_address: 100,
            free_failures: 1,
            delay_step: Duration::from_millis(100),
            delay_max: Duration::from_millis(150),
        };
        let throttle = Throttle::new(config);
        let t0 = Instant::now();
        assert_eq!(throttle.failure("Ana", "1.2.3.4", t0), Duration::ZERO);
        assert_eq!(
            throttle.failure("ana", "1.2.3.4", t0),
            Duration::from_millis(100)
        );
        assert!(throttle.check("ana", "1.2.3.4", t0).is_ok());
        assert_eq!(
            throttle.failure("ANA", "1.2.3.4", t0),
            Duration::from_millis(150)
        );
        let wait = throttle
            .check("ana", "5.6.7.8", t0 + Duration::from_secs(10))
            .expect_err("locked");
        assert_eq!(wait, Duration::from_secs(50));
        // Another user from the same address is not locked.
        assert!(throttle.check("bo", "1.2.3.4", t0).is_ok());
        // The window passes.
        assert!(
            throttle
                .check("ana", "1.2.3.4", t0 + Duration::from_secs(61))
                .is_ok()
        );
        throttle.success("ana");
        assert!(throttle.check("ana", "1.2.3.4", t0).is_ok());
    }
}
