//! What the client does when a socket closes, and how long it waits before the next try:
//! the contract's close-code table and full-jitter exponential backoff, as pure functions so
//! that they are tested without a socket.

use livevote_protocol::close_codes;

/// First reconnect delay ceiling; doubled per failed attempt.
pub const BACKOFF_START_MS: f64 = 500.0;
/// Largest delay ceiling, however many attempts failed.
pub const BACKOFF_CAP_MS: f64 = 20_000.0;
/// A socket that stayed up this long counts as healthy: the attempt counter starts over.
pub const STABLE_AFTER_MS: f64 = 5_000.0;
/// Least wait after the server closed us for exceeding its command rate (4008).
pub const RATE_LIMITED_WAIT_MS: f64 = 5_000.0;

/// The close code the client uses for a connection it gave up on itself (no frame in time,
/// or it never opened); the contract's own code for a missed pong.
pub const LOCAL_TIMEOUT: u16 = close_codes::PONG_TIMEOUT;
/// What a browser reports when the connection dropped without a close frame.
pub const ABNORMAL: u16 = 1006;

/// What to do after a socket closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Try again after the usual backoff (4000, 4009, 1006, 1009 and every code the table does
    /// not name, such as 1001 or 1011: a client that stops on an unknown code never comes back).
    Reconnect,
    /// 1012: the server is restarting; wait the `retryAfterMs` it announced, plus jitter.
    ReconnectAfterRestart,
    /// 4008: the server closed us for flooding it; wait at least [`RATE_LIMITED_WAIT_MS`].
    ReconnectSlowly,
    /// 4002: the token expired; get a new one, then reconnect.
    RenewTokenThenReconnect,
    /// 4001: the token is missing or invalid; one new token may fix it, a second 4001 stops.
    RenewTokenOnceThenStop,
    /// 1000 and 4003: the server meant it; do not come back.
    Stop,
}

/// The contract's close-code table (§5), seen from the client.
pub fn action_for_close(code: u16) -> CloseAction {
    match code {
        close_codes::NORMAL | close_codes::FORBIDDEN => CloseAction::Stop,
        close_codes::SERVER_RESTARTING => CloseAction::ReconnectAfterRestart,
        close_codes::RATE_LIMITED => CloseAction::ReconnectSlowly,
        close_codes::TOKEN_EXPIRED => CloseAction::RenewTokenThenReconnect,
        close_codes::UNAUTHORIZED => CloseAction::RenewTokenOnceThenStop,
        _ => CloseAction::Reconnect,
    }
}

/// The reconnect backoff: the first delay ceiling, doubled per failed attempt up to a cap, and
/// how much of each delay is random. The defaults are the contract's: full jitter (a uniformly
/// random wait between 0 and the ceiling) from 500 ms up to 20 s, so that many clients dropped
/// together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min_delay_ms: f64,
    max_delay_ms: f64,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_delay_ms: BACKOFF_START_MS,
            max_delay_ms: BACKOFF_CAP_MS,
            jitter: 1.0,
        }
    }
}

/// Why `connect()`'s `reconnect` options were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidBackoff {
    MinDelay,
    MaxDelay,
    Jitter,
}

impl InvalidBackoff {
    /// The message of the `INVALID_OPTIONS` error; static, so that no formatting is linked.
    pub fn message(self) -> &'static str {
        match self {
            InvalidBackoff::MinDelay => "options.reconnect.minDelayMs must be from 1 to 3600000",
            InvalidBackoff::MaxDelay => {
                "options.reconnect.maxDelayMs must be from minDelayMs to 3600000"
            }
            InvalidBackoff::Jitter => "options.reconnect.jitter must be from 0 to 1",
        }
    }
}

impl std::fmt::Display for InvalidBackoff {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.message())
    }
}

impl std::error::Error for InvalidBackoff {}

/// An hour: a longer wait is a mistake in the options, not a policy.
const LONGEST_DELAY_MS: f64 = 3_600_000.0;

impl Backoff {
    /// The page's choices; `None` keeps the default. A value that is not a finite number in
    /// range (NaN stands for "not a number") is refused.
    pub fn new(
        min_delay_ms: Option<f64>,
        max_delay_ms: Option<f64>,
        jitter: Option<f64>,
    ) -> Result<Backoff, InvalidBackoff> {
        let default = Backoff::default();
        let min_delay_ms = min_delay_ms.unwrap_or(default.min_delay_ms);
        if !(1.0..=LONGEST_DELAY_MS).contains(&min_delay_ms) {
            return Err(InvalidBackoff::MinDelay);
        }
        // A minimum above the default cap, given alone, raises the cap to it.
        let max_delay_ms = max_delay_ms.unwrap_or(default.max_delay_ms.max(min_delay_ms));
        if !(min_delay_ms..=LONGEST_DELAY_MS).contains(&max_delay_ms) {
            return Err(InvalidBackoff::MaxDelay);
        }
        let jitter = jitter.unwrap_or(default.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::Jitter);
        }
        Ok(Backoff {
            min_delay_ms,
            max_delay_ms,
            jitter,
        })
    }

    /// The wait before attempt `attempt` (0 for the first retry): a ceiling of
    /// min(max, min × 2^attempt), of which the `jitter` share is random (uniform between
    /// (1 − jitter) × ceiling and the ceiling). `random` is a number
    /// in [0, 1) (`Math.random()`).
    pub fn delay_ms(&self, attempt: u32, random: f64) -> f64 {
        // 2^22 × 1 ms already passes an hour's cap; clamping the exponent keeps the power finite.
        let ceiling =
            (self.min_delay_ms * f64::from(1u32 << attempt.min(22))).min(self.max_delay_ms);
        (ceiling * (1.0 - self.jitter + self.jitter * random.clamp(0.0, 1.0))).floor()
    }
}

/// The default [`Backoff`]'s delay: full jitter between 0 and min(cap, start × 2^attempt).
pub fn backoff_ms(attempt: u32, random: f64) -> f64 {
    Backoff::default().delay_ms(attempt, random)
}

/// How long to wait before the next connection attempt after a close handled by `action`.
/// `retry_after_ms` is what the last SERVER_RESTARTING notice of that socket asked for.
pub fn reconnect_delay_ms(
    backoff: &Backoff,
    action: CloseAction,
    attempt: u32,
    random: f64,
    retry_after_ms: Option<f64>,
) -> f64 {
    let jitter = backoff.delay_ms(attempt, random);
    match action {
        // Without the notice (the server died before sending it) a restart is any lost link.
        CloseAction::ReconnectAfterRestart => retry_after_ms.unwrap_or(0.0) + jitter,
        CloseAction::ReconnectSlowly => RATE_LIMITED_WAIT_MS + jitter,
        // The new token is already in hand when this delay starts; a short jittered pause
        // keeps many clients whose tokens expired together from arriving at once.
        _ => jitter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff_ms(0, 0.999_999), 499.0);
        assert_eq!(backoff_ms(3, 0.5), 2_000.0);
        assert_eq!(backoff_ms(40, 0.999_999), 19_999.0);
        assert_eq!(backoff_ms(5, 0.0), 0.0);
    }
}
