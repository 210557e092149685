//! One socket's state apart from its I/O: the token and its deadlines, the command rate
//! limit, and what each command does. Replies go through the connection's outbox like
//! everything else, so their order with respect to snapshots is kept.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use livevote_hub::{Connection, SharedMessage, SubscribeOutcome};
use livevote_protocol::{
    close_codes, notice_codes, Channel, ChannelKind, ChannelList, ClientCommand, ServerMessage,
};
use tokio::time::Instant;

use crate::auth::{Claims, TokenError};
use crate::realtime::notice_message;
use crate::state::AppState;

/// How long a socket may stay over its command rate after the RATE_LIMITED warning.
const RATE_LIMIT_GRACE: Duration = Duration::from_secs(5);
/// A socket counts as still over the limit if a command was refused within this.
const STILL_OVER_WINDOW: Duration = Duration::from_secs(1);
/// Channel names echoed in notices are cut to this many characters.
const ECHOED_NAME_CHARACTERS: usize = 128;

/// Why the socket task stops.
#[derive(Debug)]
pub(super) enum Ending {
    /// The peer went away or the connection failed: nothing more can be sent.
    Gone,
    /// The peer sent a close frame; its reply is flushed.
    PeerClosed,
    /// The server closes: optional notice, then the close frame.
    Close {
        code: u16,
        reason: &'static str,
        notice: Option<SharedMessage>,
        deliver_pending: bool,
    },
}

/// A per-socket token bucket (GCRA): `rate` commands per second, bursts of twice that.
#[derive(Debug)]
struct CommandRate {
    emission_interval: Duration,
    burst_tolerance: Duration,
    theoretical_arrival: Instant,
    warned_at: Option<Instant>,
    last_refused_at: Option<Instant>,
}

impl CommandRate {
    fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let emission_interval = Duration::from_secs(1) / per_second;
        CommandRate {
            emission_interval,
            burst_tolerance: emission_interval * (2 * per_second - 1),
            theoretical_arrival: Instant::now(),
            warned_at: None,
            last_refused_at: None,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        let arrival = self.theoretical_arrival.max(now);
        if arrival.duration_since(now) > self.burst_tolerance {
            self.last_refused_at = Some(now);
            return false;
        }
        self.theoretical_arrival = arrival + self.emission_interval;
        true
    }
}

/// What the socket task asks of the session after a command.
pub(super) enum Verdict {
    Continue,
    Stop(Ending),
}

pub(super) struct Session {
    state: AppState,
    connection: Arc<Connection>,
    claims: Claims,
    /// When TOKEN_EXPIRING is due; `None` once sent.
    token_warning_at: Option<Instant>,
    token_expires_at: Instant,
    rate: CommandRate,
    /// Set when a deadline moved, so the socket task re-arms its timers.
    timers_changed: bool,
}

impl Session {
    /// A session counts as one of its user's sockets on this node until it is dropped, which
    /// keeps the user's cached balance (see `BalanceCache::sweep`).
    pub(super) fn new(state: AppState, connection: Arc<Connection>, claims: Claims) -> Self {
        state.realtime.user_socket_opened(claims.sub);
        let command_rate = state.realtime.settings().command_rate;
        let mut session = Session {
            state,
            connection,
            claims,
            token_warning_at: None,
            token_expires_at: Instant::now(),
            rate: CommandRate::new(command_rate),
            timers_changed: true,
        };
        session.schedule_token();
        session
    }

    pub(super) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// TOKEN_EXPIRING at exp − min(60 s, a tenth of the lifetime); the close at exp.
    fn schedule_token(&mut self) {
        let clock = self.state.realtime.clock();
        let expires =
            DateTime::<Utc>::from_timestamp(self.claims.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let lifetime_ms = (self.claims.exp - self.claims.iat)
            .max(0)
            .saturating_mul(1_000);
        let warning_lead_ms = (lifetime_ms / 10).min(60_000);
        let warning = expires - chrono::Duration::milliseconds(warning_lead_ms);
        self.token_warning_at = Some(clock.instant_at(warning));
        self.token_expires_at = clock.instant_at(expires);
        self.timers_changed = true;
    }

    pub(super) fn token_deadline(&self) -> Instant {
        self.token_warning_at.unwrap_or(self.token_expires_at)
    }

    /// The moment the rate-limit warning runs out, if one is in force.
    pub(super) fn rate_deadline(&self) -> Option<Instant> {
        self.rate.warned_at.map(|warned| warned + RATE_LIMIT_GRACE)
    }

    /// True once after a deadline moved.
    pub(super) fn take_timers_changed(&mut self) -> bool {
        std::mem::take(&mut self.timers_changed)
    }

    pub(super) fn on_token_deadline(&mut self) -> Verdict {
        let now = Instant::now();
        if let Some(warning_at) = self.token_warning_at {
            if now >= warning_at && now < self.token_expires_at {
                self.token_warning_at = None;
                self.timers_changed = true;
                let message = format!(
                    "the token expires at {}; send a refresh",
                    self.claims.expires_at().to_rfc3339()
                );
                self.connection.send(&notice_message(
                    notice_codes::TOKEN_EXPIRING,
                    &message,
                    None,
                ));
                return Verdict::Continue;
            }
        }
        if now >= self.token_expires_at {
            return Verdict::Stop(Ending::Close {
                code: close_codes::TOKEN_EXPIRED,
                reason: "token expired",
                notice: Some(notice_message(
                    notice_codes::TOKEN_EXPIRED,
                    "the token expired",
                    None,
                )),
                deliver_pending: true,
            });
        }
        self.timers_changed = true;
        Verdict::Continue
    }

    pub(super) fn on_rate_deadline(&mut self) -> Verdict {
        let now = Instant::now();
        let still_over = self
            .rate
            .last_refused_at
            .is_some_and(|refused| now.duration_since(refused) < STILL_OVER_WINDOW);
        if still_over {
            return Verdict::Stop(rate_limit_close());
        }
        self.rate.warned_at = None;
        self.timers_changed = true;
        Verdict::Continue
    }

    /// Counts one command against the rate; on refusal, warns once, and closes 4008 if the
    /// socket is still over the limit 5 s after the warning.
    fn admit_command(&mut self) -> Result<(), Verdict> {
        let now = Instant::now();
        if self.rate.admit(now) {
            return Ok(());
        }
        match self.rate.warned_at {
            None => {
                self.rate.warned_at = Some(now);
                self.timers_changed = true;
                self.connection.send(&notice_message(
                    notice_codes::RATE_LIMITED,
                    "too many commands; slow down or the socket is closed",
                    None,
                ));
                Err(Verdict::Continue)
            }
            Some(warned) if now >= warned + RATE_LIMIT_GRACE => {
                Err(Verdict::Stop(rate_limit_close()))
            }
            Some(_) => Err(Verdict::Continue),
        }
    }

    /// A text frame from the client.
    pub(super) async fn on_text(&mut self, text: &str) -> Verdict {
        let command = serde_json::from_str::<ClientCommand>(text);
        match command {
            // Neither counts against the rate: a flood of them must not cost a socket its life.
            Ok(ClientCommand::Pong) => {
                self.connection.record_pong();
                return Verdict::Continue;
            }
            Ok(ClientCommand::Refresh { token }) => {
                self.refresh(&token);
                return Verdict::Continue;
            }
            _ => {}
        }
        if let Err(verdict) = self.admit_command() {
            return verdict;
        }
        match command {
            Ok(ClientCommand::Subscribe { channels }) => self.subscribe(channels).await,
            Ok(ClientCommand::Unsubscribe { channels }) => self.unsubscribe(channels),
            Ok(ClientCommand::Pong | ClientCommand::Refresh { .. }) => {}
            Err(error) => {
                let message = format!("unparseable or unknown command: {error}");
                self.connection
                    .send(&notice_message(notice_codes::BAD_REQUEST, &message, None));
            }
        }
        Verdict::Continue
    }

    /// A binary frame: refused, the socket stays open.
    pub(super) fn on_binary(&mut self) -> Verdict {
        if let Err(verdict) = self.admit_command() {
            return verdict;
        }
        self.connection.send(&notice_message(
            notice_codes::BAD_REQUEST,
            "binary frames are not accepted; send JSON text",
            None,
        ));
        Verdict::Continue
    }

    /// Subscribes each allowed channel (its snapshot first), then answers one SUBSCRIBED
    /// listing them all (possibly none); each refused channel gets its own SUBSCRIBE_DENIED.
    pub(super) async fn subscribe(&mut self, names: Vec<String>) {
        let realtime = self.state.realtime.clone();
        let mut subscribed: Vec<String> = Vec::new();
        for name in names {
            let channel = match name.parse::<Channel>() {
                Ok(channel) => channel,
                Err(error) => {
                    self.deny(&name, &format!("malformed channel name: {error}"));
                    continue;
                }
            };
            if !self.claims.may_subscribe(&channel) {
                self.deny(&name, "this token may not subscribe to that channel");
                continue;
            }
            if channel.kind == ChannelKind::User
                && !self.connection.is_subscribed(&channel)
                && !realtime.knows_balance(channel.id)
            {
                // Someone else's balance (an admin watching): read once, then kept current.
                match self.state.store.balance(channel.id).await {
                    Ok(Some(balance)) => realtime.remember_balance(channel.id, balance),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "balance for a user: snapshot unavailable");
                        self.deny(&name, "the balance is unavailable right now; try again");
                        continue;
                    }
                }
            }
            match realtime.subscribe(&self.connection, channel) {
                SubscribeOutcome::Subscribed | SubscribeOutcome::AlreadySubscribed => {
                    let canonical = channel.to_string();
                    if !subscribed.contains(&canonical) {
                        subscribed.push(canonical);
                    }
                }
                SubscribeOutcome::LimitReached => self.deny(
                    &name,
                    &format!(
                        "a socket holds at most {} channels",
                        livevote_protocol::MAX_CHANNELS_PER_SOCKET
                    ),
                ),
                SubscribeOutcome::Closed => return,
            }
        }
        // Always answered, so the client knows where the answers to this command end.
        self.connection
            .send(&SharedMessage::encode(&ServerMessage::Subscribed(
                ChannelList {
                    channels: subscribed,
                },
            )));
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        let mut unsubscribed: Vec<String> = Vec::new();
        for name in names {
            match name.parse::<Channel>() {
                Ok(channel) => {
                    self.state
                        .realtime
                        .hub()
                        .unsubscribe(&self.connection, channel);
                    let canonical = channel.to_string();
                    if !unsubscribed.contains(&canonical) {
                        unsubscribed.push(canonical);
                    }
                }
                Err(error) => self.connection.send(&notice_message(
                    notice_codes::BAD_REQUEST,
                    &format!("malformed channel name: {error}"),
                    Some(echoed(&name)),
                )),
            }
        }
        self.connection
            .send(&SharedMessage::encode(&ServerMessage::Unsubscribed(
                ChannelList {
                    channels: unsubscribed,
                },
            )));
    }

    fn deny(&self, name: &str, why: &str) {
        self.connection.send(&notice_message(
            notice_codes::SUBSCRIBE_DENIED,
            why,
            Some(echoed(name)),
        ));
    }

    /// Replaces the token if the new one is valid and for the same user; otherwise the old
    /// one stays in force.
    fn refresh(&mut self, token: &str) {
        let now = self.state.realtime.clock().unix_seconds();
        let denial = match self.state.auth.verify(token, now) {
            Ok(claims) if claims.sub == self.claims.sub => {
                self.claims = claims;
                self.schedule_token();
                let message = format!(
                    "token replaced; it expires at {}",
                    self.claims.expires_at().to_rfc3339()
                );
                self.connection.send(&notice_message(
                    notice_codes::TOKEN_REFRESHED,
                    &message,
                    None,
                ));
                return;
            }
            Ok(_) => "the new token is for another user",
            Err(TokenError::Expired) => "the new token has expired",
            Err(TokenError::Missing | TokenError::Invalid) => "the new token is invalid",
        };
        self.connection
            .send(&notice_message(notice_codes::REFRESH_DENIED, denial, None));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // However the socket task ends; a refresh never changes the user.
        self.state.realtime.user_socket_closed(self.claims.sub);
    }
}

fn rate_limit_close() -> Ending {
    Ending::Close {
        code: close_codes::RATE_LIMITED,
        reason: "rate limit exceeded",
        notice: None,
        deliver_pending: false,
    }
}

/// A client-supplied name, cut short for echoing.
fn echoed(name: &str) -> String {
    name.chars().take(ECHOED_NAME_CHARACTERS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let mut rate = CommandRate::new(10);
        let start = Instant::now();
        let burst = (0..100).take_while(|_| rate.admit(start)).count();
        assert_eq!(burst, 20);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        let refilled = (0..100).take_while(|_| rate.admit(Instant::now())).count();
        assert_eq!(refilled, 10);
    }
}
