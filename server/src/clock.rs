//! One clock for the whole server: wall time derived from tokio's monotonic clock, so that
//! timers, token expiry, vote cut-offs and PING timestamps agree, and tests that pause tokio's
//! time (`tokio::time::pause()`) move all of them together.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Clock {
    origin: Arc<(DateTime<Utc>, Instant)>,
}

impl Clock {
    /// A clock that reads the system time now and advances with tokio's clock from here on.
    pub fn new() -> Self {
        Clock {
            origin: Arc::new((Utc::now(), Instant::now())),
        }
    }

    /// A clock that starts at `wall` (tests).
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Clock {
            origin: Arc::new((wall, Instant::now())),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let (wall, instant) = *self.origin;
        wall + chrono::Duration::from_std(instant.elapsed()).unwrap_or_default()
    }

    pub fn unix_seconds(&self) -> i64 {
        self.now().timestamp()
    }

    /// The tokio instant at which the wall clock reads `at` (now, if that is in the past).
    pub fn instant_at(&self, at: DateTime<Utc>) -> Instant {
        let now_instant = Instant::now();
        let now_wall = self.now();
        match (at - now_wall).to_std() {
            Ok(ahead) => now_instant + ahead,
            Err(_) => now_instant,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Formats an instant the way the wire carries it: RFC 3339, milliseconds, `Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> livevote_protocol::Timestamp {
    livevote_protocol::Timestamp(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let start: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let clock = Clock::starting_at(start);
        tokio::time::sleep(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        assert_eq!(format_timestamp(clock.now()).0, "2026-11-26T12:01:30.000Z");
    }
}
