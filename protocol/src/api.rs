//! HTTP request and response bodies of the contract's `/api/*` calls.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Event, EventResult, Timestamp, Totals};

/// `POST /api/auth` request, sent by a trusted backend (never a browser: it holds the API key):
/// `{"apiKey", "userId", "role", "streamerId"?, "ttlSeconds"?}`. A malformed body is 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequest {
    /// `apiKey`: the server's `--api-key`; a wrong one is 401. Not checked with `--dev`.
    pub api_key: String,
    /// `userId`: the uuid of the user the token speaks for; it becomes the token's `sub`.
    pub user_id: String,
    /// `role`: `viewer`, `streamer`, `worker` or `admin`, the lower-case names of [`Role`].
    pub role: String,
    /// `streamerId`: for the streamer role (required there), the uuid of the streamer the
    /// token owns, whose events it may close. Left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamer_id: Option<String>,
    /// `ttlSeconds`: the token's lifetime in seconds, 1–604,800 (a week); 3,600 when `None`,
    /// which is left out of the JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `POST /api/auth` answer (200): `{"token": "<jwt>", "expiresAt": "ISO-8601"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    /// An HS256 JWT with claims `sub`, `role`, `iat`, `exp` and (streamer tokens)
    /// `streamerId`. Send it as `Authorization: Bearer <jwt>`, or as `?token=` on the socket.
    pub token: String,
    /// `expiresAt`: the token's `exp` as an instant; a socket still on it then is closed 4002.
    pub expires_at: Timestamp,
}

/// What a token allows; see the contract's role table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `viewer`: opens sockets, subscribes `streamer:` and `game:` channels and its own
    /// `user:{sub}`, votes, reads its balance.
    Viewer,
    /// `streamer`: as a viewer, and closes the events of its `streamerId` claim.
    Streamer,
    /// `worker`: creates and closes any event; does not vote.
    Worker,
    /// `admin`: everything, including ledger credits, notices and any `user:` channel.
    Admin,
}

/// An event's open/closed state in `GET /api/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// `open`: votes are accepted (until `closesAt`).
    Open,
    /// `closed`: the event has a result and takes no more votes.
    Closed,
}

/// `POST /api/events` answer: 201 when created, 200 for an identical re-send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// The event as stored, with the id the server made if the request had none.
    pub event: Event,
}

/// `GET /api/events/{id}` answer and the items of `GET /api/events`:
/// `{"event", "status", "totals", "result"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// The event as created.
    pub event: Event,
    /// `"open"` or `"closed"`.
    pub status: EventStatus,
    /// Every option's votes so far (the final ones once closed).
    pub totals: Totals,
    /// The outcome once closed; `null` (always present in the JSON) while open.
    pub result: Option<EventResult>,
}

/// `GET /api/events?streamerId=&status=open|closed&limit=&cursor=` answer:
/// `{"events": [...], "nextCursor"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    /// One page of matching events (`limit`, 1–200, default 50), latest `closesAt` first.
    pub events: Vec<EventView>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/events/{id}/votes` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteRequest {
    /// `optionId`: the [`EventOption::id`](crate::EventOption::id) voted for; one the event
    /// does not have is 422 `UNKNOWN_OPTION`.
    pub option_id: String,
    /// How many votes, 1–1,000 (422 `INVALID_VOTES` otherwise); 1 when absent. Costs
    /// `votes` × `costPerVote`, debited together or not at all (402 `INSUFFICIENT_BALANCE`).
    #[serde(default = "one_vote")]
    pub votes: u32,
}

fn one_vote() -> u32 {
    1
}

/// `POST /api/events/{id}/votes` answer (200): `{"balance": N, "totals": {...}}`. A repeat
/// with the same `Idempotency-Key` and body gets the first answer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteResponse {
    /// The voter's balance after the debit; never below 0.
    pub balance: i64,
    /// The event's totals right after this vote.
    pub totals: Totals,
}

/// `POST /api/events/{id}/close` request (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseRequest {
    /// `optionId`: names the winner instead of the most-voted option; it must be one of the
    /// event's options (422 `UNKNOWN_OPTION` otherwise). Left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_id: Option<String>,
}

/// `POST /api/events/{id}/close` answer (200): `{"eventId", "result"}`. Closing an event
/// already closed answers the same again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseResponse {
    /// `eventId`: the uuid of the closed event.
    pub event_id: Uuid,
    /// The winner and the final totals, as in EVENT_CLOSED.
    pub result: EventResult,
}

/// `GET /api/balance` and `POST /api/ledger/credit` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceResponse {
    /// `userId`: whose balance: the token's user for `GET /api/balance`, the credited user
    /// for a credit.
    pub user_id: Uuid,
    /// The balance now (after the credit); never below 0.
    pub balance: i64,
}

/// `POST /api/ledger/credit` request (admins only): `{"userId", "amount", "reason"}`, with an
/// optional `Idempotency-Key` header scoped to the sending admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditRequest {
    /// `userId`: the uuid of the user credited; a user the ledger never saw becomes known
    /// (and gets the initial balance) by this credit.
    pub user_id: String,
    /// How much to add: an integer from 1 to 10^12 (422 `INVALID_AMOUNT` otherwise).
    pub amount: i64,
    /// Why, kept in the ledger entry: 1–500 characters after trimming (422 otherwise).
    pub reason: String,
}

/// `POST /api/notices` request; `channel` is a channel name or `*` for every socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoticeRequest {
    /// `streamer:<uuid>`, `game:<uuid>`, `user:<uuid>` (its subscribers), or `*` (every socket
    /// of every node, subscribed or not).
    pub channel: String,
    /// The notice's code: 1–64 characters of `A`–`Z`, `0`–`9` and `_` (400 otherwise).
    pub code: String,
    /// The notice's text, at most 2,000 characters.
    pub message: String,
}

/// The body of every HTTP error: `{"error": {"code": "UPPER_SNAKE", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`]: `{"code": "UPPER_SNAKE", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable UPPER_SNAKE code for programs, e.g. `EVENT_CLOSED`, `INSUFFICIENT_BALANCE`,
    /// `RATE_LIMITED`, `IDEMPOTENCY_KEY_REUSED`.
    pub code: String,
    /// Human-readable text; not meant to be parsed and may change.
    pub message: String,
}
