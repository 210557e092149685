//! How livevote's values are written to and read back from SQLite columns: instants, statuses,
//! ledger kinds, JSON columns and whole event rows.

use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus, Totals};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{EventRecord, LedgerEntryKind, StoreError};

/// The columns [`event_from_row`] reads, in a form every event query can splice in.
pub(crate) const EVENT_COLUMNS: &str = "body, closes_at, status, totals, seq, result, closed_at";

/// Instants are stored as Unix nanoseconds: they sort as numbers and round-trip exactly, so a
/// record read back from the database equals the one the writer keeps in memory.
pub(crate) fn to_nanos(instant: DateTime<Utc>) -> Result<i64, StoreError> {
    instant.timestamp_nanos_opt().ok_or_else(|| {
        StoreError::Database(format!("{instant} is outside the range the store can hold"))
    })
}

pub(crate) fn from_nanos(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

pub(crate) fn status_name(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Open => "open",
        EventStatus::Closed => "closed",
    }
}

fn parse_status(name: &str) -> Result<EventStatus, StoreError> {
    match name {
        "open" => Ok(EventStatus::Open),
        "closed" => Ok(EventStatus::Closed),
        other => Err(corrupt(format!("unknown event status `{other}`"))),
    }
}

pub(crate) fn kind_name(kind: LedgerEntryKind) -> &'static str {
    match kind {
        LedgerEntryKind::InitialCredit => "initial_credit",
        LedgerEntryKind::VoteDebit => "vote_debit",
        LedgerEntryKind::AdminCredit => "admin_credit",
    }
}

pub(crate) fn parse_kind(name: &str) -> Result<LedgerEntryKind, StoreError> {
    match name {
        "initial_credit" => Ok(LedgerEntryKind::InitialCredit),
        "vote_debit" => Ok(LedgerEntryKind::VoteDebit),
        "admin_credit" => Ok(LedgerEntryKind::AdminCredit),
        other => Err(corrupt(format!("unknown ledger entry kind `{other}`"))),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Database(format!("cannot encode JSON: {error}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| corrupt(format!("unreadable JSON column: {error}")))
}

/// A row that this code could not have written: a hand-edited or foreign database.
pub(crate) fn corrupt(detail: String) -> StoreError {
    StoreError::Database(format!("corrupt row: {detail}"))
}

/// Reads the [`EVENT_COLUMNS`] of one `events` row.
pub(crate) fn event_from_row(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    let event: Event = from_json(row.try_get::<&str, _>("body")?)?;
    let status = parse_status(row.try_get::<&str, _>("status")?)?;
    let totals: Totals = from_json(row.try_get::<&str, _>("totals")?)?;
    let seq: i64 = row.try_get("seq")?;
    let result: Option<EventResult> = match row.try_get::<Option<&str>, _>("result")? {
        Some(text) => Some(from_json(text)?),
        None => None,
    };
    let closed_at: Option<i64> = row.try_get("closed_at")?;
    Ok(EventRecord {
        event,
        closes_at: from_nanos(row.try_get("closes_at")?),
        status,
        totals,
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))?,
        result,
        closed_at: closed_at.map(from_nanos),
    })
}

/// Which request an idempotency key answered; a key reused across kinds is a reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    Vote,
    Credit,
}

impl AnswerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AnswerKind::Vote => "vote",
            AnswerKind::Credit => "credit",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Self, StoreError> {
        match name {
            "vote" => Ok(AnswerKind::Vote),
            "credit" => Ok(AnswerKind::Credit),
            other => Err(corrupt(format!("unknown idempotency kind `{other}`"))),
        }
    }
}

/// SHA-256 of a request's fingerprint, as kept with its idempotency key: whatever the caller
/// puts in a fingerprint, a stored key costs the same few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub(crate) fn of(fingerprint: &str) -> Self {
        Fingerprint(Sha256::digest(fingerprint.as_bytes()).into())
    }

    pub(crate) fn from_column(bytes: &[u8]) -> Result<Self, StoreError> {
        <[u8; 32]>::try_from(bytes)
            .map(Fingerprint)
            .map_err(|_| corrupt(format!("a fingerprint of {} bytes", bytes.len())))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The first answer to a vote, as kept with its idempotency key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredVoteAnswer {
    pub(crate) balance: i64,
    pub(crate) totals: Totals,
    pub(crate) seq: u64,
}

/// The first answer to a credit, as kept with its idempotency key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredCreditAnswer {
    pub(crate) balance: i64,
}
