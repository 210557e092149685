//! `--vote-rate` across the cluster. With `--broker-url redis://…` each vote asks Redis, in one
//! round trip (EVALSHA of `gcra.lua`), whether the user is within N votes a second, burst N,
//! counted over every node: one key per user, `{prefix}:rate:votes:{user}`, holding its GCRA
//! arrival time, which expires as soon as the user's allowance is whole again.
//!
//! The node's own governor limiter is asked first and keeps its own count: it is free, it
//! keeps a flooding client's excess off Redis, and it is the limit that stays when Redis does
//! not answer. Redis is given [`CHECK_TIMEOUT`]; when it fails or is slow the vote is decided by
//! the node's limiter alone, counted in `livevote_vote_rate_fallbacks_total{reason}`, and the
//! next [`OUTAGE_HOLD`] of votes skip Redis (one vote a hold tries it again), so an outage costs
//! the vote path nothing past its first check. While Redis is away a user may therefore vote
//! up to N a second on each node.

use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Script};
use parking_lot::Mutex;
use uuid::Uuid;

use super::{refusal, UserRateLimiter};
use crate::error::AppError;

/// Longest a vote waits for Redis's answer before the node's limiter decides alone.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis failed to answer, how long votes skip it before one tries again.
pub const OUTAGE_HOLD: Duration = Duration::from_secs(1);

/// The vote rate: the node's limiter, and the cluster's when there is one.
pub struct VoteRateLimiter {
    local: UserRateLimiter,
    cluster: Option<ClusterRateLimiter>,
}

impl VoteRateLimiter {
    pub fn new(local: UserRateLimiter, cluster: Option<ClusterRateLimiter>) -> Self {
        VoteRateLimiter { local, cluster }
    }

    /// 429 `RATE_LIMITED` past the user's rate on this node, or (when Redis answers in time)
    /// across the cluster.
    pub async fn check(&self, user_id: Uuid) -> Result<(), AppError> {
        self.local.check(user_id)?;
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        match cluster.check(user_id).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(refusal(self.local.what, wait)),
            Err(unanswered) => {
                metrics::counter!(
                    "livevote_vote_rate_fallbacks_total",
                    "reason" => unanswered.reason()
                )
                .increment(1);
                Ok(())
            }
        }
    }

    /// Forgets the node's idle users; Redis's keys expire by themselves.
    pub fn forget_idle_users(&self) {
        self.local.forget_idle_users();
    }
}

/// Why Redis did not decide a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Redis answered with an error, or the connection failed.
    Failed,
    /// No answer within [`CHECK_TIMEOUT`].
    TimedOut,
    /// Redis failed lately; this vote did not ask (see [`OUTAGE_HOLD`]).
    Held,
}

impl Unanswered {
    fn reason(self) -> &'static str {
        match self {
            Unanswered::Failed => "failed",
            Unanswered::TimedOut => "timed_out",
            Unanswered::Held => "held",
        }
    }
}

/// The cluster-wide per-user rate in Redis.
pub struct ClusterRateLimiter {
    connection: ConnectionManager,
    script: Script,
    /// `{prefix}:rate:votes:`, to which the user id is appended.
    key_prefix: String,
    interval_micros: u64,
    tolerance_micros: u64,
    /// Until when votes skip Redis, while it is failing.
    held_until: Mutex<Option<Instant>>,
}

impl ClusterRateLimiter {
    /// `per_second` votes a second per user, burst the same, over every node that shares
    /// `prefix` on the Redis at `url`. Connects lazily: nothing waits for Redis here.
    pub fn new(url: &str, prefix: &str, per_second: u32) -> Result<Self, RedisError> {
        let client = ::redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CHECK_TIMEOUT))
            .set_response_timeout(Some(CHECK_TIMEOUT))
            .set_max_delay(OUTAGE_HOLD);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        let per_second = u64::from(per_second.max(1));
        let interval_micros = (1_000_000 / per_second).max(1);
        Ok(ClusterRateLimiter {
            connection,
            script: Script::new(include_str!("gcra.lua")),
            key_prefix: format!("{prefix}:rate:votes:"),
            interval_micros,
            tolerance_micros: interval_micros * (per_second - 1),
            held_until: Mutex::new(None),
        })
    }

    /// `None` when the user may vote (and the vote is counted), `Some(wait)` when refused.
    async fn check(&self, user_id: Uuid) -> Result<Option<Duration>, Unanswered> {
        if !self.may_ask(Instant::now()) {
            return Err(Unanswered::Held);
        }
        let answered = match tokio::time::timeout(CHECK_TIMEOUT, self.ask(user_id, None)).await {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(error)) => {
                tracing::debug!(%error, "the cluster vote rate was not answered");
                Err(Unanswered::Failed)
            }
            Err(_) => Err(Unanswered::TimedOut),
        };
        let mut held_until = self.held_until.lock();
        match answered {
            Ok(_) if held_until.take().is_some() => {
                tracing::info!("Redis answers again: the vote rate counts across the cluster");
            }
            Err(unanswered) => {
                if held_until.is_none() {
                    tracing::warn!(
                        reason = unanswered.reason(),
                        "Redis did not answer the vote rate check: votes are limited per node"
                    );
                }
                *held_until = Some(Instant::now() + OUTAGE_HOLD);
            }
            Ok(_) => {}
        }
        answered
    }

    /// Whether this vote asks Redis. While held, the first vote after the hold asks and holds
    /// the others for another round, so an outage costs one slow check a hold.
    fn may_ask(&self, now: Instant) -> bool {
        let mut held_until = self.held_until.lock();
        match *held_until {
            Some(until) if now < until => false,
            Some(_) => {
                *held_until = Some(now + OUTAGE_HOLD);
                true
            }
            None => true,
        }
    }

    /// One run of the script; `now_micros` replaces Redis's clock (tests only).
    async fn ask(
        &self,
        user_id: Uuid,
        now_micros: Option<u64>,
    ) -> Result<Option<Duration>, RedisError> {
        let mut invocation = self.script.key(format!("{}{user_id}", self.key_prefix));
        invocation
            .arg(self.interval_micros)
            .arg(self.tolerance_micros);
        if let Some(now) = now_micros {
            invocation.arg(now);
        }
        let mut connection = self.connection.clone();
        let (allowed, wait_micros): (i64, i64) = invocation.invoke_async(&mut connection).await?;
        Ok((allowed == 0).then(|| Duration::from_micros(wait_micros.max(0).unsigned_abs())))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};

    use super::*;

    fn test_redis_url() -> String {
        std::env::var("LIVEVOTE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// A limiter on the test Redis under a prefix of its own, or `None` (the reason printed)
    /// when Redis does not answer.
    async fn limiter_or_skip(per_second: u32) -> Option<ClusterRateLimiter> {
        let prefix = format!("lv-unit-{}", Uuid::new_v4().simple());
        let limiter = ClusterRateLimiter::new(&test_redis_url(), &prefix, per_second).ok()?;
        let mut connection = limiter.connection.clone();
        let ping = ::redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut connection);
        match tokio::time::timeout(Duration::from_secs(3), ping).await {
            Ok(Ok(_)) => Some(limiter),
            outcome => {
                eprintln!(
                    "skipping: Redis at {} does not answer: {outcome:?}",
                    test_redis_url()
                );
                None
            }
        }
    }

    /// The script decides as governor's GCRA does, with the same quota, over a sequence of
    /// requests at uneven times: bursts, pauses shorter and longer than the interval, and
    /// refusals in between. Both run on explicit clocks, so every answer must match, and every
    /// refusal's wait too.
    #[tokio::test]
    async fn the_script_decides_as_governor_does() {
        for per_second in [1, 3, 50] {
            let Some(limiter) = limiter_or_skip(per_second).await else {
                return;
            };
            let interval = Duration::from_micros(limiter.interval_micros);
            let burst = NonZeroU32::new(per_second).unwrap();
            let clock = FakeRelativeClock::default();
            let governor = RateLimiter::direct_with_clock(
                Quota::with_period(interval).unwrap().allow_burst(burst),
                clock.clone(),
            );
            let user = Uuid::new_v4();
            // Whole microseconds from a realistic epoch, so precision is tested too.
            let mut now_micros: u64 = 1_764_770_000_123_457;
            let mut step: u64 = 12_345;
            for request in 0..400 {
                // A cheap, fixed pseudo-random walk of gaps from 0 to about 2.5 intervals.
                step = step
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let gap = match request % 7 {
                    0..=2 => 0,
                    _ => (step >> 33) % (limiter.interval_micros * 5 / 2 + 1),
                };
                now_micros += gap;
                clock.advance(Duration::from_micros(gap));
                let expected = governor
                    .check()
                    .err()
                    .map(|not_until| not_until.wait_time_from(governor::clock::Clock::now(&clock)));
                let answered = limiter
                    .ask(user, Some(now_micros))
                    .await
                    .expect("Redis answers");
                assert_eq!(
                    answered, expected,
                    "rate {per_second}/s, request {request} at +{gap} µs"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_users_key_expires_once_its_allowance_is_whole_again() {
        let Some(limiter) = limiter_or_skip(4).await else {
            return;
        };
        let user = Uuid::new_v4();
        assert_eq!(limiter.ask(user, None).await.unwrap(), None);
        let mut connection = limiter.connection.clone();
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("{}{user}", limiter.key_prefix))
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(
            (1..=250).contains(&ttl),
            "one vote of 4 a second is forgotten within 250 ms, not {ttl} ms"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_holds_votes_off_it_for_a_while() {
        // Nothing listens on port 1; the connection fails at once.
        let limiter = ClusterRateLimiter::new("redis://127.0.0.1:1", "unreachable", 3).unwrap();
        let user = Uuid::new_v4();
        let first = limiter.check(user).await;
        assert!(
            matches!(first, Err(Unanswered::Failed | Unanswered::TimedOut)),
            "{first:?}"
        );
        assert_eq!(limiter.check(user).await, Err(Unanswered::Held));
        let later = Instant::now() + OUTAGE_HOLD;
        assert!(
            limiter.may_ask(later),
            "one vote tries again after the hold"
        );
        assert!(!limiter.may_ask(later), "and holds the others");
    }
}
