//! Socket messages in both directions: [`ServerMessage`] (server → client) and
//! [`ClientCommand`] (client → server), plus the event and result objects they carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An ISO-8601 / RFC 3339 instant as it travels on the wire, e.g. `2026-11-26T12:00:00.000Z`.
/// Kept as text so this crate needs no clock; the server parses and formats it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub String);

impl Timestamp {
    /// The text as it travels, e.g. to hand to a date parser. The server writes UTC with
    /// millisecond precision and a `Z` suffix; other senders may use any RFC 3339 form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Votes per option id: a JSON object such as `{"yes": 12, "no": 3}` holding every option of
/// the event (0 until it gets a vote), always the whole count, never a difference. Ordered so
/// that the same totals always serialize to the same bytes.
pub type Totals = BTreeMap<String, u64>;

/// One answer a viewer can vote for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOption {
    /// Chosen by the event's creator: non-empty, at most 64 characters, unique within the
    /// event. It is the key of [`Totals`] and what votes and results name as `optionId`.
    pub id: String,
    /// Text shown to viewers, 1–100 characters.
    pub label: String,
}

/// A live event as the worker created it (the seed's `payload.event`), with camelCase JSON
/// fields: `{"id", "streamerId", "gameId", "title", "options", "closesAt", "costPerVote",
/// "promptVersions"?}`. The bounds below are checked by `POST /api/events` (422 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The event's uuid. `POST /api/events` may leave it out and the server makes one; every
    /// message and answer carries it.
    pub id: Uuid,
    /// `streamerId`: the streamer whose channel `streamer:<uuid>` carries the event. A
    /// streamer token may close the event only when its `streamerId` claim equals this.
    pub streamer_id: Uuid,
    /// `gameId`: the game whose channel `game:<uuid>` carries the event too, or `null` when it
    /// belongs to no game. Always serialized (as `null` for `None`); a missing field reads as
    /// `None`.
    #[serde(default)]
    pub game_id: Option<Uuid>,
    /// The question shown to viewers, 1–200 characters.
    pub title: String,
    /// What viewers vote for: 2–10 options with unique ids, in display order. The order
    /// decides ties: the option listed first wins.
    pub options: Vec<EventOption>,
    /// `closesAt`: when voting ends, at most 24 h after creation and in the future when
    /// created. Votes at or after it are refused 409; the server closes the event within
    /// 100 ms of it. [`EventUpdated::closes_at`] carries the current value.
    pub closes_at: Timestamp,
    /// `costPerVote`: balance debited for each vote, 1–1,000,000; a request for n votes
    /// costs n × this, all or nothing.
    pub cost_per_vote: u64,
    /// `promptVersions`: an optional object of string values the creator attaches (e.g.
    /// `{"session": "v12"}`), kept and echoed as given and never interpreted. Left out of the
    /// JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_versions: Option<BTreeMap<String, String>>,
}

/// The outcome of a closed event: the winning option and the final totals, as
/// `{"optionId": "...", "totals": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    /// `optionId`: the winner's [`EventOption::id`]. The option with the most votes, a tie
    /// going to the option listed first (so an event without votes is won by its first
    /// option), unless the close request named the winner.
    pub option_id: String,
    /// The final votes per option; they equal the votes recorded in the ledger.
    pub totals: Totals,
}

/// Everything the server sends on a socket. A text frame holds one of these or a JSON array
/// of them (batching); clients must accept both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    /// `EVENT_CREATED`: an event new on a subscribed channel, or one in a channel's snapshot.
    /// Always the first message a client gets about an event; never dropped.
    EventCreated(EventCreated),
    /// `EVENT_UPDATED`: an event's newest totals, at most once per channel per update
    /// interval (250–500 ms). A slow client may miss intermediate ones but gets the latest,
    /// and never one after the event's `EVENT_CLOSED`.
    EventUpdated(EventUpdated),
    /// `EVENT_CLOSED`: voting on an event ended. The last message about it; never dropped.
    EventClosed(EventClosed),
    /// `BALANCE_UPDATED`: on `user:<uuid>`, that user's balance after a vote or credit, and
    /// in the channel's snapshot. A slow client may miss intermediate ones but gets the latest.
    BalanceUpdated(BalanceUpdated),
    /// `SYSTEM_NOTICE`: something the server tells this socket (see [`notice_codes`]) or an
    /// admin sent through `POST /api/notices`. Never dropped.
    SystemNotice(SystemNotice),
    /// `PING`: sent every heartbeat interval (default 20 s). Answer
    /// [`ClientCommand::Pong`] within the pong timeout (default 10 s) or the socket is closed
    /// with 4000.
    Ping(Ping),
    /// `SUBSCRIBED`: answers every subscribe command (and a `?streamerId` socket's first
    /// channel), after the snapshots of the channels it lists.
    Subscribed(ChannelList),
    /// `UNSUBSCRIBED`: answers every unsubscribe command; nothing more arrives from the
    /// channels it lists.
    Unsubscribed(ChannelList),
}

/// Payload of `EVENT_CREATED`: `{"event": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCreated {
    /// The event as its creator gave it (with the id the server made, if it had none).
    pub event: Event,
}

/// Payload of `EVENT_UPDATED`: `{"eventId", "totals", "closesAt", "seq"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventUpdated {
    /// `eventId`: the [`Event::id`] these totals belong to.
    pub event_id: Uuid,
    /// Every option's votes so far; never lower than in an earlier update of the event.
    pub totals: Totals,
    /// `closesAt`: the event's current closing time. Always sent by this server; `null` in
    /// the seed's example, which is why it may be `None`.
    pub closes_at: Option<Timestamp>,
    /// Grows with every change of this event; a client drops an update whose `seq` is not newer.
    /// Optional only so that the seed's own example (which predates it) still parses.
    #[serde(default)]
    pub seq: u64,
}

/// Payload of `EVENT_CLOSED`: `{"eventId", "result": {"optionId", "totals"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventClosed {
    /// `eventId`: the [`Event::id`] of the event that closed.
    pub event_id: Uuid,
    /// The winner and the final totals; the same as the `POST /api/events/{id}/close` answer.
    pub result: EventResult,
}

/// Payload of `BALANCE_UPDATED`: `{"balance": N, "userId": "<uuid>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceUpdated {
    /// The user's balance after the change, in the units `costPerVote` is priced in; never
    /// below 0.
    pub balance: i64,
    /// `userId`: whose balance this is (an addition to the seed, for admins watching several
    /// users). This server always sends it; `None` when absent, as in the seed's example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

/// Payload of `SYSTEM_NOTICE`: `{"code", "message", "channel"?, "retryAfterMs"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemNotice {
    /// What happened, in UPPER_SNAKE: one of [`notice_codes`] or any code an admin sent
    /// through `POST /api/notices` (1–64 characters of `A`–`Z`, `0`–`9`, `_`). A client should
    /// ignore codes it does not know.
    pub code: String,
    /// Human-readable text for logs or display (at most 2,000 characters from
    /// `/api/notices`); not meant to be parsed.
    pub message: String,
    /// The channel the notice is about (SUBSCRIBE_DENIED) or was sent to (`/api/notices`).
    /// Left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `retryAfterMs`, with SERVER_RESTARTING only: how long this client should wait before
    /// reconnecting, in milliseconds, drawn per socket from 0–5,000 so that clients do not all
    /// come back at once. Left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Payload of `PING`: `{"ts": "2026-11-26T12:00:00.000Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    /// When the server sent the ping, by the server's clock (UTC, millisecond precision).
    pub ts: Timestamp,
}

/// Payload of `SUBSCRIBED` and `UNSUBSCRIBED`: `{"channels": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    /// Canonical channel names (`kind:<uuid>`, lower-case hyphenated uuid, whatever spelling
    /// the command used), each once, in command order. May be empty: every channel of the
    /// command was refused or malformed.
    pub channels: Vec<String>,
}

/// SYSTEM_NOTICE codes the server itself uses; `/api/notices` may send any other code too.
pub mod notice_codes {
    /// A channel of a subscribe command was refused: malformed, not allowed to this token
    /// (e.g. another user's `user:` channel), or past the 100-channel limit. `channel` names
    /// it; nothing from it is ever sent.
    pub const SUBSCRIBE_DENIED: &str = "SUBSCRIBE_DENIED";
    /// A command that did not parse or has an unknown action, a binary frame, or a malformed
    /// channel in an unsubscribe; the socket stays open. Also sent before close 4003 for a
    /// `?streamerId` that is not a uuid.
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// Warning: commands came faster than `--command-rate` per second (pongs and refreshes
    /// do not count). A socket still over the limit 5 s later is closed with 4008.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The token expires soon: sent at `exp` − min(60 s, a tenth of the token's lifetime).
    /// Send a refresh command before `exp`, or the socket is closed with 4002.
    pub const TOKEN_EXPIRING: &str = "TOKEN_EXPIRING";
    /// Answers a successful refresh command: the new token is in force.
    pub const TOKEN_REFRESHED: &str = "TOKEN_REFRESHED";
    /// Answers a refresh whose token is invalid, expired or another user's; the old token
    /// stays in force.
    pub const REFRESH_DENIED: &str = "REFRESH_DENIED";
    /// The server is shutting down: carries `retryAfterMs`, and close 1012 follows.
    pub const SERVER_RESTARTING: &str = "SERVER_RESTARTING";
    /// Planned maintenance; the server never sends it by itself, admins send it through
    /// `POST /api/notices`.
    pub const MAINTENANCE: &str = "MAINTENANCE";
    /// Sent before closing a socket whose token is missing or invalid (4001).
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// Sent before closing a socket whose token expired (4002).
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    /// Sent before closing a socket for a forbidden request (4003).
    pub const FORBIDDEN: &str = "FORBIDDEN";
}

/// WebSocket close codes of the contract.
pub mod close_codes {
    /// Normal close; the client should stop.
    pub const NORMAL: u16 = 1000;
    /// The client sent a text frame over 16 KiB
    /// ([`MAX_CLIENT_FRAME_BYTES`](crate::MAX_CLIENT_FRAME_BYTES)); reconnect.
    pub const FRAME_TOO_LARGE: u16 = 1009;
    /// The server is restarting (after a SERVER_RESTARTING notice); reconnect after its
    /// `retryAfterMs`.
    pub const SERVER_RESTARTING: u16 = 1012;
    /// No `{"action": "pong"}` within the pong timeout after a PING; reconnect.
    pub const PONG_TIMEOUT: u16 = 4000;
    /// The token is missing or invalid (after an UNAUTHORIZED notice); stop, unless a fresh
    /// token can be obtained.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The token expired without a refresh; get a new token, then reconnect.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// A forbidden request, e.g. a `?streamerId` that is not a uuid; stop.
    pub const FORBIDDEN: u16 = 4003;
    /// Still over the command rate 5 s after the RATE_LIMITED warning; reconnect after a
    /// delay.
    pub const RATE_LIMITED: u16 = 4008;
    /// Too slow: more than 1 MiB of must-deliver messages waited for this socket; reconnect
    /// and resubscribe.
    pub const TOO_SLOW: u16 = 4009;
}

/// Everything a client may send on a socket. Unknown fields are ignored. Channel names stay
/// raw text here because the server judges each one alone (a malformed one is denied, not fatal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ClientCommand {
    /// `{"action": "subscribe", "channels": [...]}`: join channels. Each allowed one sends its
    /// snapshot, then one SUBSCRIBED lists them all; each refused one gets SUBSCRIBE_DENIED.
    Subscribe {
        /// Channel names `streamer:<uuid>`, `game:<uuid>` or `user:<uuid>`.
        channels: Vec<String>,
    },
    /// `{"action": "unsubscribe", "channels": [...]}`: leave channels; answered by
    /// UNSUBSCRIBED. Leaving a channel not held is not an error.
    Unsubscribe {
        /// Channel names as in [`ClientCommand::Subscribe`].
        channels: Vec<String>,
    },
    /// `{"action": "pong"}`: answers a PING. The only proof that a socket is alive
    /// (WebSocket protocol-level pongs do not count); not counted against the command rate.
    Pong,
    /// `{"action": "refresh", "token": "<jwt>"}`: replaces the connection's token without
    /// reconnecting; answered TOKEN_REFRESHED or REFRESH_DENIED. Not counted against the
    /// command rate.
    Refresh {
        /// A new JWT (from `POST /api/auth`) for the same user: its `sub` must equal the
        /// current token's.
        token: String,
    },
}
