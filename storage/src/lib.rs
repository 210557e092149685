//! livevote's durable state behind one small trait, [`Store`]: events and their totals, votes,
//! the append-only ledger with balances, and idempotency keys. [`sqlite::SqliteStore`] is the
//! embedded implementation; [`postgres::PostgresStore`] the one several nodes share.
//!
//! What a write may do is decided in one place, [`ledger`], which knows no SQL; the writer
//! task that runs those rules in group-committed batches is generic over the database
//! (`batch`); `sqlite` and `postgres` hold only their database's statements, connections and
//! row readers, and `codec` the column encodings both use.

#![warn(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus, Totals};
use uuid::Uuid;

mod batch;
mod codec;
pub mod ledger;
pub mod postgres;
pub mod sqlite;

/// Counts every SQL statement the store executes, reads and writes alike.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryCounter(Arc<AtomicU64>);

impl QueryCounter {
    pub(crate) fn add(&self, statements: u64) {
        self.0.fetch_add(statements, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An event as stored, with everything the API and the snapshots need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event exactly as created (its `closesAt` text as the server normalised it).
    pub event: Event,
    /// When voting ends (the parsed `closesAt`).
    pub closes_at: DateTime<Utc>,
    /// Open until closed, once.
    pub status: EventStatus,
    /// Votes per option; every option of the event has an entry, zero included.
    pub totals: Totals,
    /// Grows by one with every accepted vote request and once more at close.
    pub seq: u64,
    /// The winner and final totals, once closed.
    pub result: Option<EventResult>,
    /// When it closed, once closed.
    pub closed_at: Option<DateTime<Utc>>,
}

/// What `create_event` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The event is new.
    Created(EventRecord),
    /// An event with this id and an identical body already existed; nothing changed.
    AlreadyExists(EventRecord),
}

/// A request to cast votes, already validated for shape (1–1000 votes) by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteCommand {
    /// The voter (from the token).
    pub user_id: Uuid,
    /// The event voted on.
    pub event_id: Uuid,
    /// One of the event's options.
    pub option_id: String,
    /// How many votes, each costing the event's `costPerVote`.
    pub votes: u32,
    /// `Idempotency-Key` header and a fingerprint of the request (path and canonical body):
    /// a repeat with the same key and fingerprint replays the first answer.
    pub idempotency: Option<IdempotencyKey>,
    /// The server's clock at acceptance; votes at or after `closesAt` are refused.
    pub now: DateTime<Utc>,
    /// Credited (as a ledger entry) first if the user is new to the ledger, even when the vote
    /// itself is then refused: the request still authenticated the user.
    pub initial_balance: i64,
}

/// A request's `Idempotency-Key` and what identifies the request it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The header's value, scoped to the caller.
    pub key: String,
    /// The request's path and canonical body: the same key with another fingerprint is refused.
    pub fingerprint: String,
}

/// The answer to an accepted vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteReceipt {
    /// The voter's balance after the vote.
    pub balance: i64,
    /// The event's totals after the vote.
    pub totals: Totals,
    /// The event's `seq` after this vote.
    pub seq: u64,
    /// The id of the ledger entry that produced `balance`. One user's entries get growing ids,
    /// so a larger version is a newer balance, across nodes too (0 on a replay).
    pub balance_version: u64,
    /// True when this is the stored answer of an earlier request with the same key:
    /// nothing changed and nothing should be published.
    pub replayed: bool,
}

/// A credit by an admin to a user's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditCommand {
    /// The admin crediting (idempotency keys are scoped to the admin).
    pub admin_id: Uuid,
    /// Whose balance grows.
    pub user_id: Uuid,
    /// At least 1.
    pub amount: i64,
    /// The admin's reason, kept on the ledger entry.
    pub reason: String,
    /// As in [`VoteCommand::idempotency`].
    pub idempotency: Option<IdempotencyKey>,
    /// Credited first if the user is new to the ledger, as for a vote.
    pub initial_balance: i64,
}

/// The answer to an accepted credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditReceipt {
    /// The user's balance after the credit.
    pub balance: i64,
    /// As in [`VoteReceipt::balance_version`].
    pub balance_version: u64,
    /// As in [`VoteReceipt::replayed`].
    pub replayed: bool,
}

/// What `close_event` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The event as closed.
    pub record: EventRecord,
    /// True for exactly one caller per event, across every node: the one that closed it.
    pub newly_closed: bool,
}

/// A user's balance with the ledger entry that produced it: the same version a
/// [`VoteReceipt`] or [`CreditReceipt`] carries, so a cache can keep whichever is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedBalance {
    /// Whose balance.
    pub user_id: Uuid,
    /// Points the user holds, never below 0.
    pub balance: i64,
    /// The id of the ledger entry that produced `balance`.
    pub version: u64,
}

/// Most users one [`Store::balances`] statement asks for; longer lists are read in chunks so
/// that no statement nears a database's limit of bound parameters.
pub const BALANCES_PER_QUERY: usize = 500;

/// One entry of the append-only ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Whose entry it is.
    pub user_id: Uuid,
    /// Positive for credits, negative for debits.
    pub amount: i64,
    /// Why the balance changed.
    pub kind: LedgerEntryKind,
    /// For vote debits: the event voted on.
    pub event_id: Option<Uuid>,
    /// When the entry was written.
    pub created_at: DateTime<Utc>,
}

/// Why a ledger entry changed a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEntryKind {
    /// The balance a user gets when first seen (also when 0).
    InitialCredit,
    /// Votes paid for.
    VoteDebit,
    /// An admin's top-up.
    AdminCredit,
}

/// Filter of `list_events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this streamer's events.
    pub streamer_id: Option<Uuid>,
    /// Only open or only closed events.
    pub status: Option<EventStatus>,
    /// At most this many events (all of them without).
    pub limit: Option<u32>,
    /// Only events after this one in the listing's order (`closesAt` descending, then id
    /// descending): the position where the previous page ended.
    pub after: Option<EventPosition>,
}

/// Where an event stands in a listing: a keyset cursor that stays right while events are
/// created and closed between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPosition {
    /// The event's `closesAt`.
    pub closes_at: DateTime<Utc>,
    /// The event's id, which orders events with the same `closesAt`.
    pub event_id: Uuid,
}

/// Why a store call failed. Every variant but `Database` and `Unavailable` is a client's
/// mistake.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No event has this id.
    #[error("event not found")]
    NotFound,
    /// An event with this id but another body exists.
    #[error("an event with this id but a different body already exists")]
    Conflict,
    /// The event is closed, or its `closesAt` has passed.
    #[error("the event is closed")]
    EventClosed,
    /// The event has no option with this id.
    #[error("the event has no option `{0}`")]
    UnknownOption(String),
    /// The balance does not pay for the votes.
    #[error("balance {balance} is less than the {needed} this costs")]
    InsufficientBalance {
        /// The balance now.
        balance: i64,
        /// What the votes cost.
        needed: i64,
    },
    /// The key answered another request (another body, or another kind of request).
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// The database failed, or the caller broke a rule the trait leaves to it: a server-side
    /// failure (HTTP 500).
    #[error("database: {0}")]
    Database(String),
    /// The store cannot take the call now: retry later (HTTP 503 with Retry-After).
    #[error("storage unavailable: {0}")]
    Unavailable(Unavailable),
}

/// Why the store cannot take a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The writer's queue is full; nothing was written.
    #[error("too many writes are waiting")]
    QueueFull,
    /// No answer within the store's deadline. A command still queued is refused with nothing
    /// written; one already in a batch that commits late is applied all the same (a retry with
    /// the same Idempotency-Key is safe either way).
    #[error("no answer within the deadline")]
    DeadlineExceeded,
    /// Another connection (another node) holds the database's write lock for longer than the
    /// store waits, or the database cannot be reached at all (a Postgres restarting).
    #[error("the database is locked by another connection or cannot be reached")]
    DatabaseBusy,
    /// The writer task has stopped; nothing more can be written.
    #[error("the storage writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if sqlite::is_busy(&error) || postgres::is_unavailable(&error) {
            return StoreError::Unavailable(Unavailable::DatabaseBusy);
        }
        StoreError::Database(error.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(error.to_string())
    }
}

/// livevote's durable state. Every method is atomic; votes and credits change the ledger,
/// the balance and (for votes) the totals in one transaction or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Readiness for `/readyz`: the readers answer, and the writer is running and can take
    /// the write lock within the store's readiness deadline (so a node whose writer died or is
    /// stalled says so instead of failing every vote).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Makes the user known to the ledger (crediting `initial_balance` once, as an entry)
    /// and returns the balance.
    async fn ensure_user(&self, user_id: Uuid, initial_balance: i64) -> Result<i64, StoreError>;

    /// The user's balance, `None` if the ledger has never seen the user.
    async fn balance(&self, user_id: Uuid) -> Result<Option<i64>, StoreError>;

    /// The latest balance and its version for each of `user_ids` the ledger has seen (users
    /// it has never seen are left out), in no particular order: how a node that may have
    /// missed balance changes brings its cache back to the truth.
    async fn balances(&self, user_ids: &[Uuid]) -> Result<Vec<VersionedBalance>, StoreError>;

    /// Persists a validated event (its totals start at zero for every option).
    async fn create_event(
        &self,
        event: &Event,
        closes_at: DateTime<Utc>,
    ) -> Result<CreateOutcome, StoreError>;

    /// One event, `None` if no event has this id.
    async fn get_event(&self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError>;

    /// Events matching the filter, newest `closesAt` first.
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError>;

    /// Every open event and every event closed at or after `closed_since`: what a node
    /// loads into memory at start-up to serve snapshots and arm timers.
    async fn live_events(
        &self,
        closed_since: DateTime<Utc>,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Debits `votes × costPerVote` and adds the votes to the totals, atomically.
    async fn cast_vote(&self, command: VoteCommand) -> Result<VoteReceipt, StoreError>;

    /// Closes an open event with `chosen_option` as the result, or the option with the most
    /// votes (ties: the first listed). Closing a closed event returns it unchanged with
    /// `newly_closed = false`.
    async fn close_event(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, StoreError>;

    /// Adds `amount` to a user's balance as an admin credit entry.
    async fn credit(&self, command: CreditCommand) -> Result<CreditReceipt, StoreError>;

    /// The user's ledger entries, oldest first (for audits and tests).
    async fn ledger_entries(&self, user_id: Uuid) -> Result<Vec<LedgerEntry>, StoreError>;

    /// Total number of SQL statements the store has executed for its callers (for benchmarks
    /// such as "how many queries did a reconnect storm cost"). Background upkeep (schema
    /// migrations, WAL checkpoints, purging expired idempotency keys) is not counted, so that
    /// an idle store's count stays put.
    fn query_count(&self) -> u64;
}
