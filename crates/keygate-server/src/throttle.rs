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

/// IPv6 clients are counted per /64 (one subscriber's usual allocation), so rotating
/// through addresses of one network does not reset the count.
fn address_group(address: &str) -> String {
    match address
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_canonical())
    {
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(ip) => ip.to_string(),
        Err(_) => address.to_string(),
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
        // Bounded keys: an over-long username cannot grow the map by much.
        let user: String = username.chars().take(64).collect::<String>().to_lowercase();
        [
            (format!("u:{user}"), true),
            (format!("a:{}", address_group(address)), false),
        ]
    }

    fn limit(&self, per_user: bool) -> u32 {
        if per_user {
            self.config.max_failures_per_user
        } else {
            self.config.max_failures_per_address
        }
    }

    /// Reserves an attempt: `Err(retry_after)` when the username or the address is locked
    /// out, else counts the attempt now (before the password is checked), so parallel
    /// guesses cannot all slip past the limit. A success gives the attempt back.
    pub fn attempt(&self, username: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > SWEEP_AT {
            let window = self.config.window;
            windows.retain(|_, w| now.saturating_duration_since(w.started) < window);
        }
        let keys = Self::keys(username, address);
        let mut wait = Duration::ZERO;
        for (key, per_user) in &keys {
            if let Some(w) = windows.get(key) {
                let age = now.saturating_duration_since(w.started);
                if age < self.config.window && w.failures >= self.limit(*per_user) {
                    wait = wait.max(self.config.window - age);
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (key, _) in keys {
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
        }
        Ok(())
    }

    /// After a failed attempt: how long to hold the answer back.
    pub fn failure_delay(&self, username: &str, address: &str) -> Duration {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let worst = Self::keys(username, address)
            .iter()
            .filter_map(|(key, _)| windows.get(key).map(|w| w.failures))
            .max()
            .unwrap_or(0);
        let over = worst.saturating_sub(self.config.free_failures);
        (self.config.delay_step * over).min(self.config.delay_max)
    }

    /// A successful sign-in clears the username's failures and gives the address its
    /// attempt back.
    pub fn success(&self, username: &str, address: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let [(user, _), (addr, _)] = Self::keys(username, address);
        windows.remove(&user);
        if let Some(w) = windows.get_mut(&addr) {
            w.failures = w.failures.saturating_sub(1);
        }
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
        assert!(throttle.attempt("Ana", "1.2.3.4", t0).is_ok());
        assert_eq!(throttle.failure_delay("Ana", "1.2.3.4"), Duration::ZERO);
        assert!(throttle.attempt("ana", "1.2.3.4", t0).is_ok());
        assert_eq!(
            throttle.failure_delay("ana", "1.2.3.4"),
            Duration::from_millis(100)
        );
        assert!(throttle.attempt("ANA", "1.2.3.4", t0).is_ok());
        assert_eq!(
            throttle.failure_delay("ana", "1.2.3.4"),
            Duration::from_millis(150)
        );
        let wait = throttle
            .attempt("ana", "5.6.7.8", t0 + Duration::from_secs(10))
            .expect_err("locked");
        assert_eq!(wait, Duration::from_secs(50));
        // Another user from the same address is not locked.
        assert!(throttle.attempt("bo", "1.2.3.4", t0).is_ok());
        // The window passes.
        assert!(
            throttle
                .attempt("ana", "1.2.3.4", t0 + Duration::from_secs(61))
                .is_ok()
        );
        throttle.success("ana", "1.2.3.4");
        assert!(
            throttle
                .attempt("ana", "1.2.3.4", t0 + Duration::from_secs(62))
                .is_ok()
        );
    }

    #[test]
    fn ipv6_counts_per_network() {
        assert_eq!(
            address_group("2001:db8:1:2:aaaa::1"),
            address_group("2001:db8:1:2:bbbb::9")
        );
        assert_ne!(
            address_group("2001:db8:1:2::1"),
            address_group("2001:db8:1:3::1")
        );
        assert_eq!(address_group("::ffff:192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn parallel_attempts_cannot_pass_the_limit() {
        let throttle = Throttle::new(ThrottleConfig {
            max_failures_per_user: 5,
            ..ThrottleConfig::default()
        });
        let now = Instant::now();
        // All attempts are reserved before any password check finishes.
        let admitted = (0..50)
            .filter(|_| throttle.attempt("ana", "9.9.9.9", now).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }
}
