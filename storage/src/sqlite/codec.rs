//! Reading an `events` row out of SQLite; the column encodings themselves are shared by every
//! store (`crate::codec`).

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(crate) use crate::codec::*;
use crate::{EventRecord, StoreError};

/// Reads the [`EVENT_COLUMNS`] of one `events` row.
pub(crate) fn event_from_row(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    event_from_columns(EventColumns {
        body: row.try_get("body")?,
        closes_at: row.try_get("closes_at")?,
        status: row.try_get("status")?,
        totals: row.try_get("totals")?,
        seq: row.try_get("seq")?,
        result: row.try_get("result")?,
        closed_at: row.try_get("closed_at")?,
    })
}
