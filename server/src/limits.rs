//! Per-user vote rate limits (`--vote-rate`, burst the same), keyed by user id with governor.

use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::error::AppError;

pub struct UserRateLimiter {
    limiter: RateLimiter<Uuid, DashMapStateStore<Uuid>, DefaultClock>,
    /// What is limited, for the 429's message ("votes", "event listings").
    what: &'static str,
}

impl UserRateLimiter {
    pub fn new(per_second: u32, what: &'static str) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        UserRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(rate)),
            what,
        }
    }

    /// 429 `RATE_LIMITED` past the user's rate.
    pub fn check(&self, user_id: Uuid) -> Result<(), AppError> {
        self.limiter.check_key(&user_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::RateLimited {
                message: format!("too many {}; slow down", self.what),
                retry_after_seconds: wait.as_secs() + 1,
            }
        })
    }

    /// Forgets users whose buckets are full again, so the map does not grow without bound.
    pub fn forget_idle_users(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
