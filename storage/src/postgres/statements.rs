//! The Postgres statements of the writer: the [`Backend`] that the batch loop of [`crate::batch`]
//! drives on this node's only writing connection. It decides nothing; the rules of
//! [`crate::ledger`] do.
//!
//! Writers of every node are serialised by one row lock: each batch starts with the function
//! `livevote_begin_batch` (migrations/postgres), whose `UPDATE writer_lock SET generation =
//! generation + 1` waits for any other node's batch to commit. Its reads after the UPDATE, and
//! every statement after it (READ COMMITTED), see what that batch committed, and `generation`
//! tells whether anyone else committed since this writer's own last batch; if so, the function
//! reads every user and event of the batch and the cache is dropped before anything is checked,
//! as SQLite's store does with `PRAGMA data_version`. Lock and reads share one round trip, so
//! that the lock is held for the write and COMMIT only. A batch's rows are written by one
//! statement over `UNNEST`ed arrays, so that its text (and prepared plan) is the same for every
//! batch size and a batch costs the same few round trips however many commands it carries.
//!
//! The connection is opened again when it was lost (Postgres restarted, a network cut): a
//! failed batch drops it, and the next batch reconnects.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

use super::codec::{
    answer_from_columns, answer_to_columns, event_from_row, kind_name, seq_column, status_name,
    to_json, to_nanos, EVENT_COLUMNS,
};
use crate::batch::{Backend, Wanted};
use crate::ledger::{Changes, Ledger};
use crate::{EventRecord, QueryCounter, StoreError, Unavailable};

/// Idempotency keys must be kept at least 24 hours; the extra hour absorbs clock adjustments.
const KEY_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(25);
/// Expired keys deleted per transaction, so that a purge never holds locks for long.
const PURGE_ROWS: i64 = 10_000;
use super::PURGE_LOCK;
/// Longest the writer waits to (re)open its connection before the batch is answered
/// unavailable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The writer's connection and what it remembers between batches.
pub(crate) struct PostgresBackend {
    /// `None` after the connection was lost, until the next batch opens a new one.
    connection: Option<PgConnection>,
    options: PgConnectOptions,
    queries: QueryCounter,
    /// `writer_lock.generation` as this writer's last committed batch left it.
    generation: Option<i64>,
}

impl PostgresBackend {
    pub(crate) fn new(
        connection: PgConnection,
        options: PgConnectOptions,
        queries: QueryCounter,
    ) -> Self {
        PostgresBackend {
            connection: Some(connection),
            options,
            queries,
            generation: None,
        }
    }

    /// Opens a new connection if the last was lost.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        if self.connection.is_none() {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.options.connect()).await;
            match connected {
                Ok(Ok(connection)) => {
                    tracing::info!("the storage writer reconnected to Postgres");
                    self.connection = Some(connection);
                }
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(StoreError::Unavailable(Unavailable::DatabaseBusy)),
            }
        }
        Ok(())
    }

    /// The connection within a batch: `begin` has opened it.
    fn open(&mut self) -> Result<&mut PgConnection, StoreError> {
        open(&mut self.connection)
    }

    async fn purge_once(&mut self, cutoff: i64) -> Result<u64, StoreError> {
        let connection = self.open()?;
        let mut transaction = connection.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PURGE_LOCK)
            .fetch_one(&mut *transaction)
            .await?;
        if !ours {
            // Another node is purging right now; its work is this node's too.
            transaction.rollback().await?;
            return Ok(0);
        }
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (scope, key) IN \
             (SELECT scope, key FROM idempotency_keys WHERE created_at < $1 \
              ORDER BY created_at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PURGE_ROWS)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(deleted.rows_affected())
    }
}

/// The connection within a batch, borrowed apart from the backend's other fields.
fn open(connection: &mut Option<PgConnection>) -> Result<&mut PgConnection, StoreError> {
    connection
        .as_mut()
        .ok_or_else(|| StoreError::Database("the writer's connection closed mid-batch".to_owned()))
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn begin(
        &mut self,
        ledger: &mut Ledger,
        wanted: &Wanted,
        changes: &mut Changes,
    ) -> Result<(), StoreError> {
        self.queries.add(2);
        self.reconnect().await?;
        let expected_generation = self.generation.map(|ours| ours + 1);
        let missing_users = wanted.missing_users(ledger);
        let missing_events = wanted.missing_events(ledger);
        let (key_scopes, key_names): (Vec<Uuid>, Vec<&str>) = wanted
            .keys
            .iter()
            .map(|(scope, key)| (*scope, key.as_str()))
            .unzip();
        let connection = open(&mut self.connection)?;
        sqlx::query("BEGIN").execute(&mut *connection).await?;
        // The write lock (waited for at most lock_timeout) and every read of the batch in one
        // round trip: see the migration that defines the function.
        let rows =
            sqlx::query("SELECT * FROM livevote_begin_batch($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(expected_generation)
                .bind(!ledger.knows_next_entry_id())
                .bind(&missing_users)
                .bind(&wanted.users)
                .bind(&missing_events)
                .bind(&wanted.events)
                .bind(&key_scopes)
                .bind(&key_names)
                .fetch_all(&mut *connection)
                .await?;
        let mut rows = rows.iter();
        let generation: i64 = match rows.next() {
            Some(row) if row.try_get::<&str, _>("what")? == "generation" => {
                row.try_get("number")?
            }
            _ => {
                return Err(StoreError::Database(
                    "livevote_begin_batch did not return the generation first".to_owned(),
                ))
            }
        };
        if expected_generation != Some(generation) {
            if self.generation.is_some() {
                tracing::debug!("another node wrote to the database; reloading the cache");
            }
            // The function read every user and event of the batch, not only the missing ones.
            ledger.forget();
        }
        self.generation = Some(generation);
        for row in rows {
            match row.try_get::<&str, _>("what")? {
                "next_entry" => ledger.set_next_entry_id(row.try_get("number")?),
                "user" => ledger.remember_balance(row.try_get("id")?, row.try_get("number")?),
                "event" => ledger.remember_event(event_from_row(row)?),
                "key" => {
                    let answer = answer_from_columns(
                        row.try_get("kind")?,
                        row.try_get("fingerprint")?,
                        row.try_get("response")?,
                    )?;
                    changes
                        .answers
                        .insert((row.try_get("id")?, row.try_get("key")?), answer);
                }
                other => {
                    return Err(StoreError::Database(format!(
                        "livevote_begin_batch returned an unknown row `{other}`"
                    )))
                }
            }
        }
        if !ledger.knows_next_entry_id() {
            return Err(StoreError::Database(
                "livevote_begin_batch did not return the next ledger id".to_owned(),
            ));
        }
        Ok(())
    }

    async fn insert_event(
        &mut self,
        record: &EventRecord,
        changes: &Changes,
    ) -> Result<bool, StoreError> {
        self.queries.add(1);
        let inserted = sqlx::query(
            "INSERT INTO events (id, streamer_id, body, closes_at, status, totals, seq, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(record.event.id)
        .bind(record.event.streamer_id)
        .bind(to_json(&record.event)?)
        .bind(to_nanos(record.closes_at)?)
        .bind(status_name(record.status))
        .bind(to_json(&record.totals)?)
        .bind(to_nanos(changes.now)?)
        .execute(self.open()?)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn close_event(&mut self, closed: &EventRecord) -> Result<bool, StoreError> {
        let closed_at = closed
            .closed_at
            .ok_or_else(|| StoreError::Database("a closed record without closed_at".to_owned()))?;
        self.queries.add(1);
        let updated = sqlx::query(
            "UPDATE events SET status = $1, result = $2, closed_at = $3, totals = $4, seq = $5 \
             WHERE id = $6 AND status = 'open'",
        )
        .bind(status_name(closed.status))
        .bind(to_json(&closed.result)?)
        .bind(to_nanos(closed_at)?)
        .bind(to_json(&closed.totals)?)
        .bind(seq_column(closed.seq)?)
        .bind(closed.event.id)
        .execute(self.open()?)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn load_event(&mut self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.queries.add(1);
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(event_id)
            .fetch_optional(self.open()?)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// Writes everything the batch changed in one statement (a data-modifying `WITH` per
    /// table, each over `UNNEST`ed arrays, so that its text and plan are the same for every
    /// batch), then commits: two round trips however large the batch.
    async fn commit(&mut self, ledger: &Ledger, changes: &Changes) -> Result<(), StoreError> {
        let now = to_nanos(changes.now)?;
        let count = changes.entries.len();
        let mut entry_ids = Vec::with_capacity(count);
        let mut entry_users = Vec::with_capacity(count);
        let mut amounts = Vec::with_capacity(count);
        let mut balances = Vec::with_capacity(count);
        let mut entry_kinds = Vec::with_capacity(count);
        let mut vote_events = Vec::with_capacity(count);
        let mut vote_options = Vec::with_capacity(count);
        let mut votes = Vec::with_capacity(count);
        let mut reasons = Vec::with_capacity(count);
        let mut created = Vec::with_capacity(count);
        for entry in &changes.entries {
            let vote = entry.vote.as_ref();
            entry_ids.push(entry.id);
            entry_users.push(entry.user_id);
            amounts.push(entry.amount);
            balances.push(entry.balance);
            entry_kinds.push(kind_name(entry.kind));
            vote_events.push(vote.map(|vote| vote.event_id));
            vote_options.push(vote.map(|vote| vote.option_id.as_str()));
            votes.push(vote.map(|vote| vote.votes));
            reasons.push(entry.reason.as_deref());
            created.push(to_nanos(entry.created_at)?);
        }
        let mut event_ids = Vec::with_capacity(changes.dirty_events.len());
        let mut totals = Vec::with_capacity(changes.dirty_events.len());
        let mut seqs = Vec::with_capacity(changes.dirty_events.len());
        for event_id in &changes.dirty_events {
            let record = ledger.event(*event_id).ok_or_else(|| {
                StoreError::Database(format!("event {event_id} left the cache mid-batch"))
            })?;
            event_ids.push(*event_id);
            totals.push(to_json(&record.totals)?);
            seqs.push(seq_column(record.seq)?);
        }
        let mut scopes = Vec::new();
        let mut keys = Vec::new();
        let mut answer_kinds = Vec::new();
        let mut fingerprints = Vec::new();
        let mut responses = Vec::new();
        for ((scope, key), answer) in &changes.answers {
            if answer.fresh {
                let (kind, response) = answer_to_columns(&answer.response)?;
                scopes.push(*scope);
                keys.push(key.as_str());
                answer_kinds.push(kind);
                fingerprints.push(answer.fingerprint.as_bytes().to_vec());
                responses.push(response);
            }
        }

        let queries = self.queries.clone();
        let connection = self.open()?;
        queries.add(2);
        // Users before the entries that refer to them: foreign keys are checked at the end of
        // the statement. Events only while open: the writer lock makes a closed one impossible
        // here, and if it ever were, the batch must fail rather than count votes into a closed
        // event. Keys without ON CONFLICT: no other writer can have stored one of these since
        // this batch read them under the lock, and if one had, failing the batch is right.
        let updated_events: i64 = sqlx::query_scalar(
            "WITH new_users AS ( \
                 INSERT INTO users (user_id, created_at) \
                 SELECT user_id, $1 FROM UNNEST($2::uuid[]) AS batch (user_id)), \
             new_entries AS ( \
                 INSERT INTO ledger (id, user_id, amount, balance, kind, event_id, option_id, \
                 votes, reason, created_at) \
                 SELECT * FROM UNNEST($3::int8[], $4::uuid[], $5::int8[], $6::int8[], \
                 $7::text[], $8::uuid[], $9::text[], $10::int8[], $11::text[], $12::int8[])), \
             new_keys AS ( \
                 INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, \
                 created_at) \
                 SELECT scope, key, kind, fingerprint, response, $1 FROM UNNEST($13::uuid[], \
                 $14::text[], $15::text[], $16::bytea[], $17::text[]) \
                 AS batch (scope, key, kind, fingerprint, response)), \
             updated AS ( \
                 UPDATE events SET totals = batch.totals, seq = batch.seq \
                 FROM UNNEST($18::uuid[], $19::text[], $20::int8[]) AS batch (id, totals, seq) \
                 WHERE events.id = batch.id AND events.status = 'open' RETURNING 1) \
             SELECT count(*) FROM updated",
        )
        .bind(now)
        .bind(&changes.new_users)
        .bind(&entry_ids)
        .bind(&entry_users)
        .bind(&amounts)
        .bind(&balances)
        .bind(&entry_kinds)
        .bind(&vote_events)
        .bind(&vote_options)
        .bind(&votes)
        .bind(&reasons)
        .bind(&created)
        .bind(&scopes)
        .bind(&keys)
        .bind(&answer_kinds)
        .bind(&fingerprints)
        .bind(&responses)
        .bind(&event_ids)
        .bind(&totals)
        .bind(&seqs)
        .fetch_one(&mut *connection)
        .await?;
        if updated_events != event_ids.len() as i64 {
            return Err(StoreError::Database(
                "an event this batch voted on was closed by another connection".to_owned(),
            ));
        }
        sqlx::query("COMMIT").execute(&mut *connection).await?;
        Ok(())
    }

    async fn rollback(&mut self) {
        // The generation this writer saw is undone with the transaction.
        self.generation = None;
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        self.queries.add(1);
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *connection).await {
            // Postgres answers ROLLBACK outside a transaction with a warning, not an error: a
            // failure here means the connection itself is gone. The next batch opens another.
            tracing::warn!(%error, "the storage writer lost its connection; reconnecting");
            if let Some(connection) = self.connection.take() {
                drop(connection.close_hard().await);
            }
        }
    }

    async fn upkeep(&mut self, commands_waiting: &(dyn Fn() -> bool + Sync)) {
        if self.connection.is_none() {
            return;
        }
        let Ok(cutoff) = to_nanos(Utc::now() - KEY_LIFETIME) else {
            return;
        };
        loop {
            match self.purge_once(cutoff).await {
                // Votes waiting take precedence; the rest goes at the next tick.
                Ok(deleted) if deleted == PURGE_ROWS as u64 && !commands_waiting() => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "purging expired idempotency keys failed");
                    // The transaction's guard rolled back; a lost connection is reopened by the
                    // next batch.
                    break;
                }
            }
        }
    }

    async fn close(self) {
        if let Some(connection) = self.connection {
            if let Err(error) = connection.close().await {
                tracing::warn!(%error, "closing the storage writer's connection failed");
            }
        }
    }
}
