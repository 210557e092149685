//! How livevote's values are written to and read back from database columns, the same for
//! every store: instants, statuses, ledger kinds, JSON columns, whole event rows and
//! idempotency answers. Each store only reads the columns out of its own row type.

use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus, Totals};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ledger::{Answer, Fingerprint, StoredResponse};
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

/// The [`EVENT_COLUMNS`] of one `events` row, as the database returned them.
pub(crate) struct EventColumns<'row> {
    pub(crate) body: &'row str,
    pub(crate) closes_at: i64,
    pub(crate) status: &'row str,
    pub(crate) totals: &'row str,
    pub(crate) seq: i64,
    pub(crate) result: Option<&'row str>,
    pub(crate) closed_at: Option<i64>,
}

/// Decodes the [`EVENT_COLUMNS`] of one `events` row.
pub(crate) fn event_from_columns(columns: EventColumns<'_>) -> Result<EventRecord, StoreError> {
    let event: Event = from_json(columns.body)?;
    let status = parse_status(columns.status)?;
    let totals: Totals = from_json(columns.totals)?;
    let seq = columns.seq;
    let result: Option<EventResult> = match columns.result {
        Some(text) => Some(from_json(text)?),
        None => None,
    };
    Ok(EventRecord {
        event,
        closes_at: from_nanos(columns.closes_at),
        status,
        totals,
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))?,
        result,
        closed_at: columns.closed_at.map(from_nanos),
    })
}

/// A `seq` as a signed 64-bit column.
pub(crate) fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Database(format!("seq {seq} does not fit a column")))
}

/// The columns `kind`, `fingerprint` and `response` of an idempotency key's row.
pub(crate) fn answer_from_columns(
    kind: &str,
    fingerprint: &[u8],
    response: &str,
) -> Result<Answer, StoreError> {
    let fingerprint = Fingerprint::from_bytes(fingerprint)
        .ok_or_else(|| corrupt(format!("a fingerprint of {} bytes", fingerprint.len())))?;
    let response = match kind {
        "vote" => {
            let stored: StoredVoteAnswer = from_json(response)?;
            StoredResponse::Vote {
                balance: stored.balance,
                totals: stored.totals,
                seq: stored.seq,
            }
        }
        "credit" => {
            let stored: StoredCreditAnswer = from_json(response)?;
            StoredResponse::Credit {
                balance: stored.balance,
            }
        }
        other => return Err(corrupt(format!("unknown idempotency kind `{other}`"))),
    };
    Ok(Answer {
        fingerprint,
        response,
        fresh: false,
    })
}

/// The `kind` and `response` columns of a first answer.
pub(crate) fn answer_to_columns(
    response: &StoredResponse,
) -> Result<(&'static str, String), StoreError> {
    match response {
        StoredResponse::Vote {
            balance,
            totals,
            seq,
        } => Ok((
            "vote",
            to_json(&StoredVoteView {
                balance: *balance,
                totals,
                seq: *seq,
            })?,
        )),
        StoredResponse::Credit { balance } => Ok((
            "credit",
            to_json(&StoredCreditAnswer { balance: *balance })?,
        )),
    }
}

/// The first answer to a vote, as kept with its idempotency key.
#[derive(Debug, Deserialize)]
struct StoredVoteAnswer {
    balance: i64,
    totals: Totals,
    seq: u64,
}

/// Serializes like [`StoredVoteAnswer`] without cloning the totals.
#[derive(Serialize)]
struct StoredVoteView<'a> {
    balance: i64,
    totals: &'a Totals,
    seq: u64,
}

/// The first answer to a credit, as kept with its idempotency key.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCreditAnswer {
    balance: i64,
}
