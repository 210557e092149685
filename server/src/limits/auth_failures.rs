//! Wrong API keys per client address at `/api/auth` (`--auth-failure-limit`): counted per
//! address (IPv6 per /64) within a one-minute window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::AppError;

/// How long a client address's wrong API keys are counted before the count starts again.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Counts wrong API keys per client address and refuses `/api/auth` from an address past
/// `--auth-failure-limit` within [`AUTH_FAILURE_WINDOW`], whatever key it sends then, so a
/// guess cannot be confirmed by a 200 while the address is held back.
///
/// Hand-written rather than a governor bucket: only failures may count (one backend mints a
/// token for every viewer), and governor cannot look at a bucket without taking from it.
pub struct AuthFailureLimiter {
    allowed_failures: u32,
    addresses: Mutex<HashMap<IpAddr, FailureWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl AuthFailureLimiter {
    pub fn new(allowed_failures: u32) -> Self {
        AuthFailureLimiter {
            allowed_failures,
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// 429 `RATE_LIMITED` while `address` is past its wrong keys for the current window.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), AppError> {
        let key = address_key(address);
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match addresses.get(&key) {
            Some(window) if window.failures >= self.allowed_failures => {
                let elapsed = now.saturating_duration_since(window.started);
                match AUTH_FAILURE_WINDOW.checked_sub(elapsed) {
                    Some(remaining) if !remaining.is_zero() => Err(AppError::RateLimited {
                        message: "too many wrong API keys from this address; wait".into(),
                        retry_after_seconds: remaining.as_secs() + 1,
                    }),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one wrong key from `address`.
    pub fn record_failure(&self, address: IpAddr, now: Instant) {
        let key = address_key(address);
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = addresses.entry(key).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.started) >= AUTH_FAILURE_WINDOW {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Forgets addresses whose window is over, so the map does not grow without bound.
    pub fn forget_expired(&self, now: Instant) {
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        addresses.retain(|_, window| {
            now.saturating_duration_since(window.started) < AUTH_FAILURE_WINDOW
        });
        addresses.shrink_to_fit();
    }
}

/// IPv6 clients are counted per /64, the block one subscriber usually holds, so rotating
/// through a prefix's addresses buys no extra guesses.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(limiter: &AuthFailureLimiter, address: &str, now: Instant) -> bool {
        limiter.check(address.parse().unwrap(), now).is_err()
    }

    #[test]
    fn an_address_is_held_back_after_its_failures_until_the_window_ends() {
        let limiter = AuthFailureLimiter::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(!refused(&limiter, "10.0.0.1", start));
            limiter.record_failure("10.0.0.1".parse().unwrap(), start);
        }
        assert!(refused(&limiter, "10.0.0.1", start));
        assert!(refused(
            &limiter,
            "10.0.0.1",
            start + Duration::from_secs(59)
        ));
        assert!(
            !refused(&limiter, "10.0.0.2", start),
            "other addresses are not held back"
        );
        assert!(!refused(&limiter, "10.0.0.1", start + AUTH_FAILURE_WINDOW));
        limiter.record_failure("10.0.0.1".parse().unwrap(), start + AUTH_FAILURE_WINDOW);
        assert!(
            !refused(&limiter, "10.0.0.1", start + AUTH_FAILURE_WINDOW),
            "a new window starts counting from one"
        );
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_count_and_mapped_v4_is_v4() {
        let limiter = AuthFailureLimiter::new(2);
        let now = Instant::now();
        limiter.record_failure("2001:db8:1:2::1".parse().unwrap(), now);
        limiter.record_failure("2001:db8:1:2:ffff::9".parse().unwrap(), now);
        assert!(refused(&limiter, "2001:db8:1:2::77", now));
        assert!(!refused(&limiter, "2001:db8:1:3::1", now));
        limiter.record_failure("::ffff:192.0.2.7".parse().unwrap(), now);
        limiter.record_failure("192.0.2.7".parse().unwrap(), now);
        assert!(refused(&limiter, "192.0.2.7", now));
    }

    #[test]
    fn expired_windows_are_forgotten() {
        let limiter = AuthFailureLimiter::new(1);
        let now = Instant::now();
        limiter.record_failure("10.0.0.1".parse().unwrap(), now);
        limiter.record_failure("10.0.0.2".parse().unwrap(), now + Duration::from_secs(30));
        limiter.forget_expired(now + AUTH_FAILURE_WINDOW);
        let remaining = limiter.addresses.lock().unwrap().len();
        assert_eq!(remaining, 1);
    }
}
