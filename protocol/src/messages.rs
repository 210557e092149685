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
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Votes per option id. Ordered so that the same totals always serialize to the same bytes.
pub type Totals = BTreeMap<String, u64>;

/// One answer a viewer can vote for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOption {
    pub id: String,
    pub label: String,
}

/// A live event as the worker created it (the seed's `payload.event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: Uuid,
    pub streamer_id: Uuid,
    #[serde(default)]
    pub game_id: Option<Uuid>,
    pub title: String,
    pub options: Vec<EventOption>,
    pub closes_at: Timestamp,
    pub cost_per_vote: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_versions: Option<BTreeMap<String, String>>,
}

/// The outcome of a closed event: the winning option and the final totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    pub option_id: String,
    pub totals: Totals,
}

/// Everything the server sends on a socket. A text frame holds one of these or a JSON array
/// of them (batching); clients must accept both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    EventCreated(EventCreated),
    EventUpdated(EventUpdated),
    EventClosed(EventClosed),
    BalanceUpdated(BalanceUpdated),
    SystemNotice(SystemNotice),
    Ping(Ping),
    Subscribed(ChannelList),
    Unsubscribed(ChannelList),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCreated {
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventUpdated {
    pub event_id: Uuid,
    pub totals: Totals,
    /// The event's current closing time.
    pub closes_at: Option<Timestamp>,
    /// Grows with every change of this event; a client drops an update whose `seq` is not newer.
    /// Optional only so that the seed's own example (which predates it) still parses.
    #[serde(default)]
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventClosed {
    pub event_id: Uuid,
    pub result: EventResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceUpdated {
    pub balance: i64,
    /// Whose balance this is (an addition to the seed, for admins watching several users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemNotice {
    pub code: String,
    pub message: String,
    /// The channel the notice is about (SUBSCRIBE_DENIED) or was sent to (`/api/notices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// With SERVER_RESTARTING: how long this client should wait before reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    pub ts: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    pub channels: Vec<String>,
}

/// SYSTEM_NOTICE codes the server itself uses; `/api/notices` may send any other code too.
pub mod notice_codes {
    pub const SUBSCRIBE_DENIED: &str = "SUBSCRIBE_DENIED";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const TOKEN_EXPIRING: &str = "TOKEN_EXPIRING";
    pub const TOKEN_REFRESHED: &str = "TOKEN_REFRESHED";
    pub const REFRESH_DENIED: &str = "REFRESH_DENIED";
    pub const SERVER_RESTARTING: &str = "SERVER_RESTARTING";
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
    pub const NORMAL: u16 = 1000;
    pub const FRAME_TOO_LARGE: u16 = 1009;
    pub const SERVER_RESTARTING: u16 = 1012;
    pub const PONG_TIMEOUT: u16 = 4000;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const TOKEN_EXPIRED: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    pub const RATE_LIMITED: u16 = 4008;
    pub const TOO_SLOW: u16 = 4009;
}

/// Everything a client may send on a socket. Unknown fields are ignored. Channel names stay
/// raw text here because the server judges each one alone (a malformed one is denied, not fatal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ClientCommand {
    Subscribe { channels: Vec<String> },
    Unsubscribe { channels: Vec<String> },
    Pong,
    Refresh { token: String },
}
