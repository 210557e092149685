//! The SQLite statements of the writer: the [`Backend`] that the batch loop of [`crate::batch`]
//! drives on the only writing connection. It decides nothing; the rules of [`crate::ledger`] do.
//!
//! A batch costs one round trip for `BEGIN IMMEDIATE` and `PRAGMA data_version`, one to load
//! what the cache lacks, and one carrying a few multi-row statements followed by COMMIT. The
//! cache stays correct with other processes writing the same file because `PRAGMA
//! data_version`, read under the write lock, changes when any other connection has committed
//! since; the cache is then thrown away before anything is checked.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::codec::{
    answer_from_columns, answer_to_columns, corrupt, event_from_row, kind_name, seq_column,
    status_name, to_json, to_nanos, EVENT_COLUMNS,
};
use crate::batch::{Backend, Wanted};
use crate::ledger::{Changes, Ledger};
use crate::{EventRecord, QueryCounter, StoreError};

/// Rows per multi-row statement (ten parameters each at most: 5,000 of SQLite's 32,766).
const ROWS_PER_STATEMENT: usize = 500;
/// Idempotency keys must be kept at least 24 hours; the extra hour absorbs clock adjustments.
const KEY_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(25);
/// Expired keys deleted per statement, so that a purge never holds the write lock for long.
const PURGE_ROWS: i64 = 10_000;

/// The writer's connection and what it remembers between batches.
pub(crate) struct SqliteBackend {
    connection: SqliteConnection,
    queries: QueryCounter,
    /// `PRAGMA data_version` when the cache was last known to match the database.
    data_version: Option<i64>,
}

impl SqliteBackend {
    pub(crate) fn new(connection: SqliteConnection, queries: QueryCounter) -> Self {
        SqliteBackend {
            connection,
            queries,
            data_version: None,
        }
    }

    /// Loads the users and events of `wanted` that `ledger` lacks, and the stored answers of
    /// its keys.
    async fn load(
        &mut self,
        ledger: &mut Ledger,
        wanted: &Wanted,
        changes: &mut Changes,
    ) -> Result<(), StoreError> {
        let missing_users = wanted.missing_users(ledger);
        for chunk in missing_users.chunks(ROWS_PER_STATEMENT) {
            // A known user always has an entry (the initial credit), and the latest one holds
            // the balance.
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, (SELECT balance FROM ledger WHERE ledger.user_id = users.user_id \
                 ORDER BY id DESC LIMIT 1) AS balance FROM users WHERE user_id IN (",
            );
            let mut list = query.separated(", ");
            for user_id in chunk {
                list.push_bind(*user_id);
            }
            query.push(")");
            self.queries.add(1);
            for row in query.build().fetch_all(&mut self.connection).await? {
                let user_id: Uuid = row.try_get("user_id")?;
                let balance: Option<i64> = row.try_get("balance")?;
                let balance = balance
                    .ok_or_else(|| corrupt(format!("user {user_id} has no ledger entry")))?;
                ledger.remember_balance(user_id, balance);
            }
        }
        for chunk in wanted.missing_events(ledger).chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE id IN ("
            ));
            let mut list = query.separated(", ");
            for event_id in chunk {
                list.push_bind(*event_id);
            }
            query.push(")");
            self.queries.add(1);
            for row in query.build().fetch_all(&mut self.connection).await? {
                ledger.remember_event(event_from_row(&row)?);
            }
        }
        for chunk in wanted.keys.chunks(ROWS_PER_STATEMENT) {
            // A join with the wanted pairs, because `(scope, key) IN (VALUES ...)` scans the table.
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT k.scope AS scope, k.key AS key, k.kind AS kind, k.fingerprint AS fingerprint, \
                 k.response AS response FROM (",
            );
            query.push_values(chunk, |mut row, (scope, key)| {
                row.push_bind(*scope).push_bind(key.as_str());
            });
            query.push(
                ") AS wanted JOIN idempotency_keys AS k \
                 ON k.scope = wanted.column1 AND k.key = wanted.column2",
            );
            self.queries.add(1);
            for row in query.build().fetch_all(&mut self.connection).await? {
                let answer = answer_from_columns(
                    row.try_get("kind")?,
                    row.try_get("fingerprint")?,
                    row.try_get("response")?,
                )?;
                changes
                    .answers
                    .insert((row.try_get("scope")?, row.try_get("key")?), answer);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(
        &mut self,
        ledger: &mut Ledger,
        wanted: &Wanted,
        changes: &mut Changes,
    ) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock now, so that the data_version read in the same round
        // trip, and every read that follows, see the state this batch will commit on top of.
        self.queries.add(2);
        let version: i64 = sqlx::query_scalar("BEGIN IMMEDIATE; PRAGMA data_version")
            .fetch_one(&mut self.connection)
            .await?;
        if self.data_version != Some(version) {
            if self.data_version.is_some() {
                tracing::debug!("another connection wrote to the database; reloading the cache");
                ledger.forget();
            }
            self.data_version = Some(version);
        }
        if !ledger.knows_next_entry_id() {
            self.queries.add(1);
            let next: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM ledger")
                .fetch_one(&mut self.connection)
                .await?;
            ledger.set_next_entry_id(next);
        }
        // Round trips within one process: SQLite gains nothing from folding them together.
        self.load(ledger, wanted, changes).await
    }

    async fn insert_event(
        &mut self,
        record: &EventRecord,
        changes: &Changes,
    ) -> Result<bool, StoreError> {
        self.queries.add(1);
        let inserted = sqlx::query(
            "INSERT INTO events (id, streamer_id, body, closes_at, status, totals, seq, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(record.event.id)
        .bind(record.event.streamer_id)
        .bind(to_json(&record.event)?)
        .bind(to_nanos(record.closes_at)?)
        .bind(status_name(record.status))
        .bind(to_json(&record.totals)?)
        .bind(to_nanos(changes.now)?)
        .execute(&mut self.connection)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn close_event(&mut self, closed: &EventRecord) -> Result<bool, StoreError> {
        let closed_at = closed
            .closed_at
            .ok_or_else(|| StoreError::Database("a closed record without closed_at".to_owned()))?;
        self.queries.add(1);
        let updated = sqlx::query(
            "UPDATE events SET status = ?, result = ?, closed_at = ?, totals = ?, seq = ? \
             WHERE id = ? AND status = ?",
        )
        .bind(status_name(closed.status))
        .bind(to_json(&closed.result)?)
        .bind(to_nanos(closed_at)?)
        .bind(to_json(&closed.totals)?)
        .bind(seq_column(closed.seq)?)
        .bind(closed.event.id)
        .bind(status_name(livevote_protocol::EventStatus::Open))
        .execute(&mut self.connection)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn load_event(&mut self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.queries.add(1);
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?"))
            .bind(event_id)
            .fetch_optional(&mut self.connection)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// Writes everything the batch changed and commits, in one round trip to the connection's
    /// thread: a few multi-row statements of up to [`ROWS_PER_STATEMENT`] rows, then COMMIT.
    async fn commit(&mut self, ledger: &Ledger, changes: &Changes) -> Result<(), StoreError> {
        let now = to_nanos(changes.now)?;
        let mut events = Vec::with_capacity(changes.dirty_events.len());
        for event_id in &changes.dirty_events {
            let record = ledger.event(*event_id).ok_or_else(|| {
                StoreError::Database(format!("event {event_id} left the cache mid-batch"))
            })?;
            events.push((*event_id, to_json(&record.totals)?, seq_column(record.seq)?));
        }
        let mut fresh = Vec::new();
        for ((scope, key), answer) in &changes.answers {
            if answer.fresh {
                let (kind, response) = answer_to_columns(&answer.response)?;
                fresh.push((*scope, key.as_str(), kind, &answer.fingerprint, response));
            }
        }
        let mut entries = Vec::with_capacity(changes.entries.len());
        for entry in &changes.entries {
            entries.push((entry, to_nanos(entry.created_at)?));
        }

        let mut query = QueryBuilder::<Sqlite>::new("");
        let mut statements = 1;
        // Users first: ledger entries and votes refer to them.
        for chunk in changes.new_users.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push("INSERT INTO users (user_id, created_at) ");
            query.push_values(chunk, |mut row, user_id| {
                row.push_bind(*user_id).push_bind(now);
            });
            query.push("; ");
        }
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push(
                "INSERT INTO ledger (id, user_id, amount, balance, kind, event_id, option_id, \
                 votes, reason, created_at) ",
            );
            query.push_values(chunk, |mut row, (entry, created_at)| {
                let vote = entry.vote.as_ref();
                row.push_bind(entry.id)
                    .push_bind(entry.user_id)
                    .push_bind(entry.amount)
                    .push_bind(entry.balance)
                    .push_bind(kind_name(entry.kind))
                    .push_bind(vote.map(|vote| vote.event_id))
                    .push_bind(vote.map(|vote| vote.option_id.as_str()))
                    .push_bind(vote.map(|vote| vote.votes))
                    .push_bind(entry.reason.as_deref())
                    .push_bind(*created_at);
            });
            query.push("; ");
        }
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push("UPDATE events SET totals = batch.column2, seq = batch.column3 FROM (");
            query.push_values(chunk, |mut row, (event_id, totals, seq)| {
                row.push_bind(*event_id)
                    .push_bind(totals.as_str())
                    .push_bind(*seq);
            });
            query.push(") AS batch WHERE events.id = batch.column1; ");
        }
        for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push(
                "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) ",
            );
            query.push_values(
                chunk,
                |mut row, (scope, key, kind, fingerprint, response)| {
                    row.push_bind(*scope)
                        .push_bind(*key)
                        .push_bind(*kind)
                        .push_bind(fingerprint.as_bytes())
                        .push_bind(response.as_str())
                        .push_bind(now);
                },
            );
            query.push("; ");
        }
        query.push("COMMIT");
        self.queries.add(statements);
        query.build().execute(&mut self.connection).await?;
        Ok(())
    }

    async fn rollback(&mut self) {
        // Fails harmlessly when the failure was the COMMIT itself or BEGIN never ran.
        self.queries.add(1);
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut self.connection).await {
            tracing::debug!(%error, "rolling back a failed batch");
        }
    }

    async fn upkeep(&mut self, commands_waiting: &(dyn Fn() -> bool + Sync)) {
        let Ok(cutoff) = to_nanos(Utc::now() - KEY_LIFETIME) else {
            return;
        };
        loop {
            let deleted = sqlx::query(
                // Rows are in age order by id: everything below the oldest young row is expired,
                // and finding that row scans only the expired ones before it.
                "DELETE FROM idempotency_keys WHERE id < coalesce( \
                 (SELECT id FROM idempotency_keys WHERE created_at >= ?1 ORDER BY id LIMIT 1), \
                 (SELECT max(id) + 1 FROM idempotency_keys)) \
                 AND id < (SELECT min(id) FROM idempotency_keys) + ?2",
            )
            .bind(cutoff)
            .bind(PURGE_ROWS)
            .execute(&mut self.connection)
            .await;
            match deleted {
                // Votes waiting take precedence; the rest goes at the next tick.
                Ok(done) if done.rows_affected() == PURGE_ROWS as u64 && !commands_waiting() => {
                    continue
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "purging expired idempotency keys failed");
                    break;
                }
            }
        }
    }

    async fn close(self) {
        if let Err(error) = self.connection.close().await {
            tracing::warn!(%error, "closing the storage writer's connection failed");
        }
    }
}
