//! Request limits: per-user rates for votes and listings (`--vote-rate`, `--list-rate`, keyed
//! by user id with governor; the vote rate also across the cluster, `cluster.rs`), and wrong
//! API keys per client address (`--auth-failure-limit`, `auth_failures.rs`).

mod auth_failures;
mod cluster;

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::error::AppError;

pub use auth_failures::AuthFailureLimiter;
pub use cluster::{ClusterRateLimiter, VoteRateLimiter};

/// One node's per-user rate: `per_second` requests a second, burst the same.
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
            refusal(
                self.what,
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// Forgets users whose buckets are full again, so the map does not grow without bound.
    pub fn forget_idle_users(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The 429 for a user who may try again after `wait`. Retry-After is in whole seconds and
/// rounded up, so a client that obeys it is never refused again for the same reason.
fn refusal(what: &str, wait: Duration) -> AppError {
    AppError::RateLimited {
        message: format!("too many {what}; slow down"),
        retry_after_seconds: wait.as_secs() + 1,
    }
}
